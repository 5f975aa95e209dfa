//! Templates: the first create makes one, later creates restore from it.

use petty_core::{CoreError, ManagerConfig};
use petty_protocol::Request;
use petty_vmm::MemoryBacking;

use crate::Env;

/// The template directories (and anything left beside them).
fn templates(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.data_dir().join("templates"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".lock"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(start_paused = true)]
async fn the_first_create_makes_a_template_and_later_ones_restore_from_it() {
    let env = Env::new();
    let m = env
        .manager(ManagerConfig {
            templates: true,
            ..env.config()
        })
        .await;

    // A template that cannot be made fails the create and leaves nothing.
    env.fake.fail_starts(1);
    let e = m
        .create(env.sandbox().name("a").build().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, CoreError::Vm(_)), "{e:?}");
    assert!(templates(&env).is_empty(), "{:?}", templates(&env));
    assert!(m.list().await.unwrap().is_empty());

    let a = m
        .create(env.sandbox().name("a").build().unwrap())
        .await
        .unwrap();
    let b = m
        .create(env.sandbox().name("b").build().unwrap())
        .await
        .unwrap();
    let made = templates(&env);
    assert_eq!(made.len(), 1, "{made:?}");
    let template = env.data_dir().join("templates").join(&made[0]);

    let starts = env.fake.starts();
    assert_eq!(starts.len(), 3, "one template VM, then two restores");
    // The template VM: its RAM a file mapped shared, gone once saved.
    assert!(starts[0].id.starts_with("template-"));
    assert_eq!(
        starts[0].memory,
        MemoryBacking::File {
            path: template
                .with_file_name(format!(".tmp-{}-{}", made[0], std::process::id()))
                .join(petty_vmm::SNAPSHOT_RAM),
            shared: true,
        }
    );
    assert!(!env.fake.vm(&starts[0].id).unwrap().is_alive());
    // Each sandbox: a restore mapping the template's RAM privately, told
    // its own name.
    for (start, id, name) in [(&starts[1], a, "a"), (&starts[2], b, "b")] {
        assert_eq!(start.id, id.to_string());
        assert_eq!(start.restore_from.as_ref(), Some(&template));
        assert_eq!(
            start.memory,
            MemoryBacking::File {
                path: template.join(petty_vmm::SNAPSHOT_RAM),
                shared: false,
            }
        );
        let told = env
            .vm(id)
            .requests()
            .into_iter()
            .any(|r| matches!(r, Request::Refresh { hostname: Some(h), .. } if h == name));
        assert!(told, "{name}");
    }
    m.destroy_all().await.unwrap();
    env.assert_clean();
}
