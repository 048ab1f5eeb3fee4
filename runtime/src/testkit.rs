//! [`TestFramework`]: given/when/then tests of an aggregate's decisions, with no runtime, no
//! log and no async — `handle` and `apply` are pure, so they need none.
//!
//! ```
//! # use keel::{Aggregate, TestFramework};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Default, Serialize, Deserialize)] struct Counter { n: u32 }
//! # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)] enum Ev { Added(u32) }
//! # #[derive(Debug, PartialEq, thiserror::Error)] #[error("too big")] struct TooBig;
//! # impl Aggregate for Counter {
//! #     const TYPE: &'static str = "Counter";
//! #     type Command = u32; type Event = Ev; type Error = TooBig;
//! #     fn handle(&self, c: u32) -> Result<Vec<Ev>, TooBig> {
//! #         if self.n + c > 10 { Err(TooBig) } else { Ok(vec![Ev::Added(c)]) } }
//! #     fn apply(&mut self, Ev::Added(c): &Ev) { self.n += c }
//! # }
//! TestFramework::<Counter>::new()
//!     .given(vec![Ev::Added(8)])
//!     .when(3)
//!     .then_error(TooBig);
//! ```

use std::fmt::Debug;

use crate::aggregate::Aggregate;

/// Given past events, when a command, then the expected events or error.
pub struct TestFramework<A: Aggregate> {
    state: A,
}

impl<A: Aggregate> Default for TestFramework<A> {
    fn default() -> Self {
        TestFramework {
            state: A::default(),
        }
    }
}

impl<A: Aggregate> TestFramework<A> {
    /// A fresh aggregate with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The aggregate's history: these events are applied in order.
    pub fn given(mut self, events: impl IntoIterator<Item = A::Event>) -> Self {
        for event in events {
            self.state.apply(&event);
        }
        self
    }

    /// The aggregate has no history (reads better than `given(vec![])`).
    pub fn given_no_previous_events(self) -> Self {
        self
    }

    /// Runs `command` against the state built so far.
    pub fn when(self, command: A::Command) -> Outcome<A> {
        let result = self.state.handle(command);
        Outcome {
            state: self.state,
            result,
        }
    }
}

/// The result of [`TestFramework::when`], to assert on.
pub struct Outcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Outcome<A> {
    /// Asserts the command emitted exactly `expected`.
    #[track_caller]
    pub fn then_expect_events(self, expected: Vec<A::Event>) -> A
    where
        A::Event: PartialEq,
    {
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "the command emitted other events");
                let mut state = self.state;
                for event in &events {
                    state.apply(event);
                }
                state
            }
            Err(e) => panic!("expected events {expected:?}, but the command was rejected: {e}"),
        }
    }

    /// Asserts the command was rejected with `expected`.
    #[track_caller]
    pub fn then_error(self, expected: A::Error)
    where
        A::Error: PartialEq + Debug,
    {
        match self.result {
            Ok(events) => panic!("expected rejection {expected:?}, but got events {events:?}"),
            Err(e) => assert_eq!(e, expected, "the command was rejected for another reason"),
        }
    }

    /// Asserts the command was rejected, with any error matching `check`.
    #[track_caller]
    pub fn then_error_matches(self, check: impl FnOnce(&A::Error) -> bool) {
        match self.result {
            Ok(events) => panic!("expected a rejection, but got events {events:?}"),
            Err(e) => assert!(check(&e), "unexpected rejection: {e}"),
        }
    }

    /// The raw result, for custom assertions.
    pub fn result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}
