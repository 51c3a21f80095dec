//! Clients that create, cancel and read their own jobs through random nodes, with an
//! Idempotency-Key on every write, retrying a write whose outcome they did not learn
//! with the same key (as a client does), and recording every attempt.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_protocol::api::JobInfo;
use ferry_protocol::{JobId, JobState, JobType, NewJob};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Urls;
use crate::{Rng, tokens};

/// What an operation was.
#[derive(Clone, Debug)]
pub enum Call {
    /// A create of alice's job named `key`, with `key` as its Idempotency-Key.
    Create {
        /// The key, also the job's display name.
        key: String,
    },
    /// A cancel of `job` with Idempotency-Key `key`.
    Cancel {
        /// The job.
        job: JobId,
        /// The key.
        key: String,
    },
    /// A read of `job`.
    Read {
        /// The job.
        job: JobId,
    },
}

/// How an operation ended, as its client saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// Created with this id.
    Created(JobId),
    /// Cancelled.
    Cancelled,
    /// Read in this state.
    Read(JobState),
    /// Refused with this client-error status: never right for these requests.
    Refused(u16),
    /// Timed out, refused with a 5xx or 429, or the connection broke: the outcome is
    /// unknown.
    Unknown,
    /// Never sent (the node was down): no effect.
    NotSent,
}

/// One attempt of one operation.
#[derive(Clone, Debug)]
pub struct Op {
    /// What was asked.
    pub call: Call,
    /// When it was sent.
    pub invoked: Instant,
    /// When its answer (or failure) came.
    pub completed: Instant,
    /// What came.
    pub seen: Seen,
}

/// Every operation of every client.
#[derive(Default)]
pub struct History {
    ops: Mutex<Vec<Op>>,
    acknowledged_creates: AtomicUsize,
    /// Writes that timed out and were sent again with the same key.
    pub timed_out_and_retried: AtomicUsize,
}

impl History {
    fn record(&self, op: Op) {
        if matches!(op.seen, Seen::Created(_)) {
            self.acknowledged_creates.fetch_add(1, Ordering::Relaxed);
        }
        self.ops.lock().unwrap_or_else(PoisonError::into_inner).push(op);
    }

    /// Every operation so far.
    pub fn all(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Every operation so far, taken out (a soak checks its history interval by
    /// interval).
    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.ops.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Creates acknowledged so far.
    pub fn acknowledged_creates(&self) -> usize {
        self.acknowledged_creates.load(Ordering::Relaxed)
    }
}

/// How the clients behave.
#[derive(Clone, Debug)]
pub struct TrafficConfig {
    /// Clients, each with its own jobs.
    pub clients: usize,
    /// How long a request may take before its client gives up on it.
    pub timeout: Duration,
    /// Attempts of one write (the same key each time) before it is left to the checker.
    pub attempts: usize,
    /// Uncancelled jobs a client keeps; at this many it cancels its oldest instead of
    /// creating one (a soak's steady state). `usize::MAX` for no limit.
    pub live: usize,
    /// Pause after each operation.
    pub pace: Duration,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            clients: 3,
            timeout: Duration::from_secs(3),
            attempts: 5,
            live: usize::MAX,
            pace: Duration::from_millis(1),
        }
    }
}

/// Clients at work until [`Traffic::stop`].
pub struct Traffic {
    /// What they did.
    pub history: Arc<History>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Traffic {
    /// Starts `config.clients` clients on the nodes at `urls`, each with a generator
    /// seeded from `rng`.
    pub fn start(urls: Urls, config: &TrafficConfig, rng: &mut Rng) -> Self {
        let history = Arc::new(History::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..config.clients)
            .map(|me| {
                let client = Client {
                    me,
                    urls: urls.clone(),
                    history: history.clone(),
                    stop: stop.clone(),
                    rng: Rng(rng.next() | 1),
                    config: config.clone(),
                };
                tokio::spawn(client.run())
            })
            .collect();
        Self { history, stop, tasks }
    }

    /// Stops the clients and waits for them; their history.
    pub async fn stop(self) -> anyhow::Result<Arc<History>> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await??;
        }
        Ok(self.history)
    }
}

/// The body of alice's job created with `key`.
pub fn job_for(key: &str) -> NewJob {
    NewJob {
        display_name: key.into(),
        job_type: JobType::Download,
        properties: Default::default(),
        files: vec![],
    }
}

/// Creates alice's job named `key` at the node at `url`, with `key` as its
/// Idempotency-Key.
pub fn create(http: &reqwest::Client, url: &str, key: &str) -> reqwest::RequestBuilder {
    http.post(format!("{url}/v1/jobs"))
        .bearer_auth(tokens::ALICE)
        .header("Idempotency-Key", key)
        .json(&job_for(key))
}

/// Cancels `job` at the node at `url`, with `key` as the Idempotency-Key.
pub fn cancel(http: &reqwest::Client, url: &str, job: JobId, key: &str) -> reqwest::RequestBuilder {
    http.post(format!("{url}/v1/jobs/{job}/cancel"))
        .bearer_auth(tokens::ALICE)
        .header("Idempotency-Key", key)
}

/// What one request came to.
enum Answer {
    NotSent,
    TimedOut,
    Broken,
    Status(u16, Option<Box<JobInfo>>),
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    match request.send().await {
        Err(e) if e.is_connect() => Answer::NotSent,
        Err(e) if e.is_timeout() => Answer::TimedOut,
        Err(_) => Answer::Broken,
        Ok(answer) => {
            let status = answer.status().as_u16();
            let info = if answer.status().is_success() {
                answer.json::<JobInfo>().await.ok().map(Box::new)
            } else {
                None
            };
            Answer::Status(status, info)
        }
    }
}

/// A job of a client, and whether its cancel was sent.
struct Mine {
    job: JobId,
    cancelling: bool,
}

/// Most jobs a client remembers (its oldest are forgotten in a long soak).
const REMEMBERED: usize = 2_000;

struct Client {
    me: usize,
    urls: Urls,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    rng: Rng,
    config: TrafficConfig,
}

impl Client {
    async fn run(mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(self.config.timeout)
            .pool_max_idle_per_host(0)
            .build()?;
        let mut mine: Vec<Mine> = Vec::new();
        let mut n = 0;
        while !self.stop.load(Ordering::Relaxed) {
            n += 1;
            let live = mine.iter().filter(|m| !m.cancelling).count();
            let choice = self.rng.below(4);
            if choice < 2 && live >= self.config.live {
                // At the cap, a create becomes a cancel of the oldest live job.
                let oldest = mine.iter().position(|m| !m.cancelling).unwrap_or(0);
                self.cancel(&http, &mut mine[oldest], n).await;
            } else if choice < 2 || mine.is_empty() {
                let key = format!("c{}-{n}", self.me);
                if let Some(job) = self.create(&http, &key).await {
                    mine.push(Mine { job, cancelling: false });
                }
            } else if choice == 2 {
                let pick = self.rng.below(mine.len() as u64) as usize;
                if !mine[pick].cancelling {
                    self.cancel(&http, &mut mine[pick], n).await;
                }
            } else {
                let job = mine[self.rng.below(mine.len() as u64) as usize].job;
                self.read(&http, job).await;
            }
            if mine.len() > REMEMBERED {
                mine.remove(0);
            }
            tokio::time::sleep(self.config.pace).await;
        }
        Ok(())
    }

    fn url(&mut self) -> String {
        self.urls.pick(&mut self.rng)
    }

    /// Sends a write until its outcome is known or its attempts run out, recording
    /// each attempt.
    async fn write(
        &mut self,
        call: Call,
        request: impl Fn(&str) -> reqwest::RequestBuilder,
        done: impl Fn(Option<&JobInfo>) -> Seen,
    ) -> Seen {
        let (mut seen, mut maybe_sent) = (Seen::NotSent, false);
        for attempt in 1..=self.config.attempts {
            let url = self.url();
            let invoked = Instant::now();
            let answer = send(request(&url)).await;
            let timed_out = matches!(answer, Answer::TimedOut);
            seen = match answer {
                Answer::NotSent => Seen::NotSent,
                Answer::TimedOut | Answer::Broken => Seen::Unknown,
                Answer::Status(200..=299, info) => done(info.as_deref()),
                Answer::Status(status, _) if status == 429 || status >= 500 => Seen::Unknown,
                Answer::Status(status, _) => Seen::Refused(status),
            };
            let op =
                Op { call: call.clone(), invoked, completed: Instant::now(), seen: seen.clone() };
            self.history.record(op);
            maybe_sent |= seen == Seen::Unknown;
            if !matches!(seen, Seen::Unknown | Seen::NotSent) || attempt == self.config.attempts {
                break;
            }
            if timed_out {
                self.history.timed_out_and_retried.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if seen == Seen::NotSent && maybe_sent { Seen::Unknown } else { seen }
    }

    async fn create(&mut self, http: &reqwest::Client, key: &str) -> Option<JobId> {
        let call = Call::Create { key: key.into() };
        let created = |info: Option<&JobInfo>| info.map_or(Seen::Unknown, |i| Seen::Created(i.id));
        match self.write(call, |url| create(http, url, key), created).await {
            Seen::Created(id) => Some(id),
            _ => None,
        }
    }

    async fn cancel(&mut self, http: &reqwest::Client, mine: &mut Mine, n: usize) {
        let (job, key) = (mine.job, format!("x{}-{n}", self.me));
        mine.cancelling = true;
        let call = Call::Cancel { job, key: key.clone() };
        let seen = self.write(call, |url| cancel(http, url, job, &key), |_| Seen::Cancelled).await;
        // Never sent at all: the job may be cancelled later.
        mine.cancelling = seen != Seen::NotSent;
    }

    async fn read(&mut self, http: &reqwest::Client, job: JobId) {
        let url = self.url();
        let invoked = Instant::now();
        let request = http.get(format!("{url}/v1/jobs/{job}")).bearer_auth(tokens::ALICE);
        let seen = match send(request).await {
            Answer::Status(200, Some(info)) => Seen::Read(info.state),
            Answer::Status(404, _) => Seen::Refused(404),
            Answer::NotSent => Seen::NotSent,
            _ => Seen::Unknown,
        };
        self.history.record(Op {
            call: Call::Read { job },
            invoked,
            completed: Instant::now(),
            seen,
        });
    }
}
