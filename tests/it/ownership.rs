//! G8: users see and change only their own jobs; admins see all and take ownership.

use ferry_protocol::api::FileChanges;
use ferry_protocol::command::{JobAction, NewJob, PropertyChanges};
use ferry_protocol::job::Priority;
use ferry_protocol::{BitsCode, JobType};
use ferry_tests::{Node, NodeOptions, tokens};

use crate::support::{file, new_job, queue_view};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_isolated_and_admins_take_over() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::queue_only()).await?;
    let alice = node.client(Some(tokens::ALICE))?;
    let bob = node.client(Some(tokens::BOB))?;
    let admin = node.client(Some(tokens::ADMIN))?;

    let job = alice
        .create_job(&NewJob {
            display_name: "alice's".into(),
            job_type: Default::default(),
            properties: PropertyChanges {
                custom_headers: Some(Some(vec!["Authorization: Bearer s3cret".to_owned()].into())),
                ..Default::default()
            },
            files: vec![file(1)],
        })
        .await?;
    let bobs = bob.create_job(&new_job("bob's", JobType::Download, vec![])).await?;
    let before = queue_view(&node).await?;

    // Bob cannot list, read, change or cancel Alice's job: it does not exist for him.
    let listed: Vec<_> = bob.list_jobs(false).await?.into_iter().map(|j| j.id).collect();
    assert_eq!(listed, vec![bobs.id]);
    let not_found = Some(BitsCode::BG_E_NOT_FOUND);
    assert_eq!(bob.job(job.id).await.err().and_then(|e| e.code()), not_found);
    assert_eq!(bob.files(job.id).await.err().and_then(|e| e.code()), not_found);
    assert_eq!(bob.job_error(job.id).await.err().and_then(|e| e.code()), not_found);
    let change = PropertyChanges { priority: Some(Priority::Foreground), ..Default::default() };
    assert_eq!(bob.set_properties(job.id, &change).await.err().and_then(|e| e.code()), not_found);
    assert_eq!(bob.add_files(job.id, vec![file(2)]).await.err().and_then(|e| e.code()), not_found);
    let rename =
        FileChanges { remote_url: Some("https://elsewhere.example/x".into()), valid: None };
    assert_eq!(bob.set_file(job.id, 0, &rename).await.err().and_then(|e| e.code()), not_found);
    for action in JobAction::ALL {
        assert_eq!(
            bob.act(job.id, action).await.err().and_then(|e| e.code()),
            not_found,
            "{action:?}"
        );
    }
    // Only administrators may ask for every user's jobs.
    assert_eq!(
        bob.list_jobs(true).await.err().and_then(|e| e.code()),
        Some(BitsCode::E_ACCESSDENIED)
    );
    assert_eq!(
        alice.act(job.id, JobAction::TakeOwnership).await.err().and_then(|e| e.code()),
        Some(BitsCode::E_ACCESSDENIED)
    );
    assert_eq!(queue_view(&node).await?, before, "nothing changed");

    // The admin lists everyone's jobs...
    let all: Vec<_> = admin.list_jobs(true).await?.into_iter().map(|j| j.id).collect();
    assert!(all.contains(&job.id) && all.contains(&bobs.id));
    assert!(
        admin.list_jobs(false).await?.is_empty(),
        "without all_users the admin sees its own jobs"
    );

    // ...and takes ownership, which strips the previous owner's secrets.
    let taken = admin.act(job.id, JobAction::TakeOwnership).await?;
    assert_eq!(taken.job.owner.as_str(), "root");
    assert!(taken.job.properties.custom_headers.is_empty());
    assert_eq!(alice.job(job.id).await.err().and_then(|e| e.code()), not_found);
    assert!(alice.list_jobs(false).await?.is_empty());
    assert_eq!(admin.list_jobs(false).await?.len(), 1);
    Ok(())
}
