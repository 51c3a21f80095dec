//! `Queue::list_page`: filters by state, priority, type and owner, who may ask for
//! what, and pages that follow one another in id order without gaps or repeats.

use super::*;

/// A job of `who` with the given type and priority; resumed (QUEUED) when `queued`.
fn job(
    h: &mut Harness,
    who: &Caller,
    job_type: JobType,
    priority: Priority,
    queued: bool,
) -> JobId {
    let mut spec = new_job(job_type, 1);
    spec.properties.priority = Some(priority);
    let id = h.created(who, spec);
    if queued {
        assert_eq!(code(h.act(who, id, JobAction::Resume)), BitsCode::S_OK);
    }
    id
}

fn ids(page: &JobPage<'_>) -> Vec<JobId> {
    page.jobs.iter().map(|j| j.id).collect()
}

fn refused(result: Result<JobPage<'_>, CommandError>) -> BitsCode {
    match result {
        Ok(page) => panic!("listed {:?}", ids(&page)),
        Err(e) => e.code,
    }
}

#[test]
fn filters_narrow_the_listing_and_combine() {
    let mut h = Harness::new();
    let a = job(&mut h, &alice(), JobType::Download, Priority::Normal, false);
    let b = job(&mut h, &alice(), JobType::Upload, Priority::High, true);
    let c = job(&mut h, &alice(), JobType::Download, Priority::High, true);
    let cancelled = job(&mut h, &alice(), JobType::Download, Priority::High, false);
    h.act(&alice(), cancelled, JobAction::Cancel).expect("cancel");
    let list = |query: JobQuery| ids(&h.queue.list_page(&alice(), &query).expect("list"));

    assert_eq!(list(JobQuery::default()), vec![a, b, c], "everything unfinished, by id");
    let queued = JobQuery { states: vec![JobState::Queued], ..JobQuery::default() };
    assert_eq!(list(queued), vec![b, c]);
    let either =
        JobQuery { states: vec![JobState::Suspended, JobState::Queued], ..JobQuery::default() };
    assert_eq!(list(either), vec![a, b, c]);
    let high = JobQuery { priorities: vec![Priority::High], ..JobQuery::default() };
    assert_eq!(list(high), vec![b, c]);
    let uploads = JobQuery { types: vec![JobType::Upload], ..JobQuery::default() };
    assert_eq!(list(uploads), vec![b]);
    let both = JobQuery {
        priorities: vec![Priority::High],
        types: vec![JobType::Download],
        ..JobQuery::default()
    };
    assert_eq!(list(both), vec![c]);
    let final_state = JobQuery { states: vec![JobState::Cancelled], ..JobQuery::default() };
    assert!(list(final_state).is_empty(), "final jobs are never enumerated");
}

#[test]
fn owner_is_the_caller_for_users_and_anyone_for_administrators() {
    let mut h = Harness::new();
    let a = job(&mut h, &alice(), JobType::Download, Priority::Normal, false);
    let b = job(&mut h, &bob(), JobType::Download, Priority::Normal, false);
    let owner = |name: &str| Some(name.to_owned());

    let own = JobQuery { owner: owner("alice"), ..JobQuery::default() };
    assert_eq!(ids(&h.queue.list_page(&alice(), &own).expect("own")), vec![a]);
    let other = JobQuery { owner: owner("bob"), ..JobQuery::default() };
    assert_eq!(refused(h.queue.list_page(&alice(), &other)), BitsCode::E_ACCESSDENIED);
    let all = JobQuery { all_users: true, ..JobQuery::default() };
    assert_eq!(refused(h.queue.list_page(&alice(), &all)), BitsCode::E_ACCESSDENIED);

    assert_eq!(ids(&h.queue.list_page(&admin(), &other).expect("bob's")), vec![b]);
    assert_eq!(ids(&h.queue.list_page(&admin(), &all).expect("all")), vec![a, b]);
    let all_of_bob = JobQuery { all_users: true, owner: owner("bob"), ..JobQuery::default() };
    assert_eq!(ids(&h.queue.list_page(&admin(), &all_of_bob).expect("bob's")), vec![b]);
    assert!(h.queue.list_page(&admin(), &JobQuery::default()).expect("own").jobs.is_empty());
    let nobody = JobQuery { owner: owner("no\u{1}body"), ..JobQuery::default() };
    assert!(h.queue.list_page(&admin(), &nobody).expect("nobody's").jobs.is_empty());
}

#[test]
fn pages_follow_each_other_without_gaps_or_repeats() {
    let mut h = Harness::new();
    let mut made: Vec<JobId> = (0..7)
        .map(|i| {
            let priority = if i % 2 == 0 { Priority::Low } else { Priority::High };
            job(&mut h, &alice(), JobType::Download, priority, false)
        })
        .collect();
    made.sort();
    let mut seen = Vec::new();
    let mut query = JobQuery { limit: Some(3), ..JobQuery::default() };
    let mut pages = 0;
    loop {
        let page = h.queue.list_page(&alice(), &query).expect("page");
        assert!(page.jobs.len() <= 3);
        seen.extend(ids(&page));
        pages += 1;
        match page.next {
            Some(next) => {
                assert_eq!(Some(&next), seen.last(), "the cursor is the last id listed");
                query.after = Some(next);
            }
            None => break,
        }
    }
    assert_eq!((seen, pages), (made.clone(), 3));

    // A page that ends exactly at the last match says there is no more.
    let exact = JobQuery { limit: Some(7), ..JobQuery::default() };
    assert_eq!(h.queue.list_page(&alice(), &exact).expect("page").next, None);
    // Paging applies to the filtered jobs.
    let high = JobQuery { priorities: vec![Priority::High], limit: Some(2), ..JobQuery::default() };
    let page = h.queue.list_page(&alice(), &high).expect("page");
    assert_eq!(page.jobs.len(), 2);
    assert!(page.jobs.iter().all(|j| j.props.priority == Priority::High));
    let rest = JobQuery { after: page.next, ..high };
    let rest = h.queue.list_page(&alice(), &rest).expect("page");
    assert_eq!((rest.jobs.len(), rest.next), (1, None));
    // A cursor past every job, or of a job that no longer exists, still pages on.
    let past = JobQuery { after: made.last().copied(), ..JobQuery::default() };
    assert!(h.queue.list_page(&alice(), &past).expect("page").jobs.is_empty());
}

#[test]
fn a_limit_outside_the_page_bounds_is_refused() {
    let h = Harness::new();
    for limit in [0, MAX_PAGE + 1] {
        let query = JobQuery { limit: Some(limit), ..JobQuery::default() };
        assert_eq!(refused(h.queue.list_page(&alice(), &query)), BitsCode::E_INVALIDARG);
    }
    let query = JobQuery { limit: Some(MAX_PAGE), ..JobQuery::default() };
    assert!(h.queue.list_page(&alice(), &query).is_ok());
}
