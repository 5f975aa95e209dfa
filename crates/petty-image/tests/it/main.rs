//! Integration tests for petty-image: builds the real assets into the user's
//! cache (minutes the first time, instant afterwards) and inspects them.

mod assets;
