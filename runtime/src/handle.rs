//! [`AggregateHandle`]: the typed, cloneable command API of one aggregate type.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ractor::{Actor, MessagingErr};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::aggregate::Aggregate;
use crate::error::{CommandError, short};
use crate::instance::{
    AggregateActor, AggregateArgs, AggregateMsg, Committed, Deadline, Inbox, QueryFn, Queued,
    Refused, WATCHED_TICKS,
};
use crate::log::{aggregate_key, partition_for};
use crate::metrics::{self as m, CommandMetrics};
use crate::shared::{
    ActivateError, AggregateType, InFlightPermit, LiveEntry, Mailbox, ShardMsg, Shared, Spawner,
};
use crate::upcast::Upcasters;

/// Options of one command.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// An id that makes the command idempotent: a retry with the same id returns the first
    /// outcome instead of appending again (within the aggregate's dedup window).
    pub command_id: Option<String>,
    /// How long to wait for the reply. Default = the runtime's command timeout.
    pub timeout: Option<Duration>,
}

impl SendOptions {
    /// Options with a command id.
    pub fn with_id(command_id: impl Into<String>) -> Self {
        SendOptions {
            command_id: Some(command_id.into()),
            timeout: None,
        }
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Sends commands to aggregates of type `A`. Cheap to clone and share across tasks.
pub struct AggregateHandle<A: Aggregate> {
    shared: Arc<Shared>,
    upcasters: Arc<Upcasters>,
    metrics: Arc<CommandMetrics>,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Clone for AggregateHandle<A> {
    fn clone(&self) -> Self {
        AggregateHandle {
            shared: self.shared.clone(),
            upcasters: self.upcasters.clone(),
            metrics: self.metrics.clone(),
            _aggregate: PhantomData,
        }
    }
}

/// What offering a request to one live actor came to.
enum Offer<T, E: std::error::Error + 'static> {
    Delivered,
    /// The actor is draining: route the request again.
    Retry(T),
    Failed(CommandError<E>),
}

fn stopped<E: std::error::Error>(key: &str) -> CommandError<E> {
    CommandError::Unavailable {
        aggregate: short(key).into_owned(),
        reason: "its actor stopped without answering".into(),
    }
}

/// `timeout` after `start`, or a date too far to matter when that does not fit in an `Instant`.
fn deadline(start: Instant, timeout: Duration) -> Instant {
    start
        .checked_add(timeout)
        .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365 * 30))
}

/// Re-routes of one command before each further one waits a millisecond.
const MAX_ROUTES: usize = 8;

impl<A: Aggregate> AggregateHandle<A> {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        AggregateHandle {
            shared,
            upcasters: Arc::new(A::upcasters()),
            metrics: Arc::new(CommandMetrics::new(A::TYPE)),
            _aggregate: PhantomData,
        }
    }

    /// Sends `command` to aggregate `id` and waits for the outcome. `Ok` means the events are
    /// durable in the log.
    pub async fn send(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<Committed<A::Event>, CommandError<A::Error>> {
        self.send_with(id, command, SendOptions::default()).await
    }

    /// Sends `command` with options (command id, timeout).
    pub async fn send_with(
        &self,
        id: &str,
        command: A::Command,
        options: SendOptions,
    ) -> Result<Committed<A::Event>, CommandError<A::Error>> {
        let started = Instant::now();
        self.check_ids(id, options.command_id.as_deref())?;
        let config = &self.shared.config;
        let timeout = options.timeout.unwrap_or(config.command_timeout);
        let deadline = Deadline {
            at: deadline(started, timeout),
            timeout,
        };
        let key = aggregate_key(A::TYPE, id);
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            command,
            command_id: options.command_id,
            reply,
            deadline,
            permit: self.admit()?,
        };
        let routed = async {
            self.deliver(&key, id, queued, started).await?;
            answer.await.unwrap_or_else(|_| Err(stopped(&key)))
        };
        let result = if timeout >= config.tick() * WATCHED_TICKS {
            // The shard's tick answers it at its deadline (see `instance/inbox.rs`), and
            // routing is bounded by it: no timer per command.
            routed.await
        } else {
            tokio::time::timeout_at(deadline.at, routed)
                .await
                .unwrap_or_else(|_| Err(deadline.timed_out(&key)))
        };
        self.metrics.latency(started.elapsed().as_secs_f64());
        result
    }

    /// Refuses an id no backend could store before anything is touched.
    fn check_ids(&self, id: &str, command_id: Option<&str>) -> Result<(), CommandError<A::Error>> {
        let config = &self.shared.config;
        config
            .check_id("aggregate id", id)
            .and_then(|()| command_id.map_or(Ok(()), |c| config.check_id("command id", c)))
            .map_err(|reason| CommandError::InvalidId { reason })
    }

    /// Admits one more request under `max_in_flight`.
    fn admit(&self) -> Result<InFlightPermit, CommandError<A::Error>> {
        if self.shared.shutting_down.load(Ordering::Relaxed) {
            return Err(CommandError::ShuttingDown);
        }
        self.shared.admit().ok_or_else(|| {
            metrics::counter!(m::OVERLOADED, "limit" => "in_flight").increment(1);
            CommandError::Overloaded(format!(
                "{} commands in flight (max_in_flight)",
                self.shared.config.max_in_flight
            ))
        })
    }

    /// Runs `query` on the current state of aggregate `id` (activating it if needed), in line
    /// with its commands: it sees every command answered before it was sent.
    pub async fn query<R: Send + 'static>(
        &self,
        id: &str,
        query: impl FnOnce(&A) -> R + Send + 'static,
    ) -> Result<R, CommandError<A::Error>> {
        self.check_ids(id, None)?;
        let started = Instant::now();
        let key = aggregate_key(A::TYPE, id);
        let (reply, answer) = oneshot::channel();
        let query: QueryFn<A> = Box::new(move |state| {
            let _ = reply.send(state.map(|(state, _seq)| query(state)));
        });
        let timeout = self.shared.config.command_timeout;
        let until = Deadline {
            at: deadline(started, timeout),
            timeout,
        };
        let routed = async {
            let permit = self.admit()?;
            let message = AggregateMsg::Query {
                query,
                _permit: permit,
            };
            self.route(&key, id, until, message, |entry, message| {
                match entry.cell.send_message(message) {
                    Ok(()) => Offer::Delivered,
                    Err(MessagingErr::SendErr(message)) => Offer::Retry(message),
                    Err(other) => Offer::Failed(CommandError::Unavailable {
                        aggregate: short(&key).into_owned(),
                        reason: format!("the query cannot be delivered to its actor: {other}"),
                    }),
                }
            })
            .await?;
            answer.await.unwrap_or_else(|_| Err(stopped(&key)))
        };
        tokio::time::timeout_at(until.at, routed)
            .await
            .unwrap_or_else(|_| Err(until.timed_out(&key)))
    }

    /// Puts `queued` in the inbox of the live actor of `key`. `now` is when it was sent (the
    /// actor's last use, for passivation).
    async fn deliver(
        &self,
        key: &str,
        id: &str,
        queued: Queued<A>,
        now: Instant,
    ) -> Result<(), CommandError<A::Error>> {
        let now_ms = self.shared.ms_at(now);
        let capacity = self.shared.config.mailbox_capacity;
        let until = queued.deadline;
        self.route(key, id, until, queued, |entry, queued| {
            let Some(inbox) = entry.inbox.as_any().downcast_ref::<Inbox<A>>() else {
                return Offer::Failed(CommandError::Unavailable {
                    aggregate: short(key).into_owned(),
                    reason: "its actor is of another aggregate type".into(),
                });
            };
            entry.last_used.store(now_ms, Ordering::Relaxed);
            match inbox.push(queued, capacity, &entry.cell) {
                Ok(()) => Offer::Delivered,
                Err(Refused::Closed(queued)) => Offer::Retry(queued),
                Err(Refused::Full) => {
                    metrics::counter!(m::OVERLOADED, "limit" => "mailbox").increment(1);
                    Offer::Failed(CommandError::Overloaded(format!(
                        "{capacity} commands already queued for {} (mailbox_capacity)",
                        short(key)
                    )))
                }
            }
        })
        .await
    }

    /// Offers `request` to the live actor of `key`, activating it when needed and routing
    /// again when the actor turns out to be draining (the shard waits for the old actor to
    /// stop before activating a new one). Gives up with `Timeout` at the deadline `until`.
    async fn route<T>(
        &self,
        key: &str,
        id: &str,
        until: Deadline,
        mut request: T,
        mut offer: impl FnMut(&LiveEntry, T) -> Offer<T, A::Error>,
    ) -> Result<(), CommandError<A::Error>> {
        for attempt in 0.. {
            if attempt >= MAX_ROUTES {
                // The aggregate keeps being passivated under us (a live-actor cap far below
                // the working set): give the shard a moment rather than spinning.
                if Instant::now() >= until.at {
                    return Err(until.timed_out(key));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let entry = match self.shared.registry.get(key).map(|e| e.clone()) {
                Some(entry) => entry,
                None => tokio::time::timeout_at(until.at, self.activate(key, id))
                    .await
                    .map_err(|_| until.timed_out(key))??,
            };
            match offer(&entry, request) {
                Offer::Delivered => return Ok(()),
                Offer::Failed(error) => return Err(error),
                Offer::Retry(back) => {
                    self.shared.unregister(key, entry.cell.get_id());
                    request = back;
                }
            }
        }
        unreachable!("the routing loop only ends by returning")
    }

    /// Spawns the actor of `key`, linked to the shard that runs it.
    fn spawner(&self, key: String, id: String) -> Spawner {
        spawner::<A>(
            self.shared.clone(),
            self.upcasters.clone(),
            self.metrics.clone(),
            key,
            id,
        )
    }

    /// The type-erased spawner and compaction hook shards use to settle this type's keys.
    /// It holds no `Arc<Shared>` (the shard passes its own), so registering it in `Shared`
    /// makes no reference cycle.
    pub(crate) fn aggregate_type(&self) -> AggregateType {
        let upcasters = self.upcasters.clone();
        let metrics = self.metrics.clone();
        AggregateType {
            spawner: Box::new(move |shared, key, id| {
                spawner::<A>(shared, upcasters.clone(), metrics.clone(), key, id)
            }),
            compact: Box::new(|cell| cell.send_message(AggregateMsg::<A>::Compact).is_ok()),
        }
    }

    /// Asks the partition's shard for the live actor of `key`, spawning it if needed.
    async fn activate(
        &self,
        key: &str,
        id: &str,
    ) -> Result<Arc<LiveEntry>, CommandError<A::Error>> {
        let partition = partition_for(key, self.shared.partitions);
        let Some(shard) = self.shared.shards.get(&partition).map(|s| s.clone()) else {
            if self.shared.shutting_down.load(Ordering::Relaxed) {
                return Err(CommandError::ShuttingDown);
            }
            return Err(CommandError::NotOwner {
                partition,
                owner: self.shared.owner_of.get(&partition).map(|o| o.clone()),
            });
        };
        let spawner = self.spawner(key.to_string(), id.to_string());
        let (reply, answer) = oneshot::channel();
        let sent = shard.send_message(ShardMsg::Activate {
            key: key.to_string(),
            spawner,
            reply,
        });
        let not_serving = || {
            if self.shared.shutting_down.load(Ordering::Relaxed) {
                CommandError::ShuttingDown
            } else {
                CommandError::NotOwner {
                    partition,
                    owner: self.shared.owner_of.get(&partition).map(|o| o.clone()),
                }
            }
        };
        if sent.is_err() {
            return Err(not_serving());
        }
        match answer.await {
            Ok(Ok(entry)) => Ok(entry),
            Ok(Err(ActivateError::ShuttingDown)) | Err(_) => Err(not_serving()),
            Ok(Err(ActivateError::Spawn(reason))) => Err(CommandError::Unavailable {
                aggregate: short(key).into_owned(),
                reason: format!("its actor cannot be started: {reason}"),
            }),
        }
    }
}

/// Spawns the actor of `key`, linked to the shard that runs it.
fn spawner<A: Aggregate>(
    shared: Arc<Shared>,
    upcasters: Arc<Upcasters>,
    metrics: Arc<CommandMetrics>,
    key: String,
    id: String,
) -> Spawner {
    Box::new(move |supervisor, part| {
        Box::pin(async move {
            let inbox = Arc::new(Inbox::<A>::new());
            let args = AggregateArgs {
                key,
                id,
                shared,
                partition: part,
                upcasters,
                metrics,
            };
            let (actor, _) = Actor::spawn_linked(
                None,
                AggregateActor::<A>::new(),
                (args, inbox.clone()),
                supervisor,
            )
            .await?;
            Ok((actor.get_cell(), inbox as Arc<dyn Mailbox>))
        })
    })
}
