//! Tests of the partition state: the checkpoint, pinning keys, uncertain appends, the tail and
//! its budget.

use super::*;

fn budget() -> Arc<TailBudget> {
    Arc::new(TailBudget::new(1 << 20))
}

#[test]
fn checkpoint_is_the_lowest_uncovered_offset() {
    let p = PartitionState::new(0, 10, budget());
    assert_eq!(p.checkpoint(), 10);
    p.record("A/1", [10, 12]);
    p.record("A/2", [11, 13]);
    assert_eq!(p.checkpoint(), 10);
    p.covered("A/1", 12);
    assert_eq!(p.checkpoint(), 11);
    assert_eq!(p.offsets_after("A/2", Some(11)), vec![13]);
    p.covered("A/2", 13);
    assert_eq!(p.checkpoint(), 14);
    assert_eq!(p.uncovered_events(), 0);
}

#[test]
fn the_walk_over_pinning_keys_visits_each_once_in_bounded_steps() {
    let p = PartitionState::new(0, 0, budget());
    let keys = 100_000u64;
    for offset in 0..keys {
        p.record(&format!("A/{offset}"), [offset]);
    }
    let (mut cursor, mut seen, mut steps) = (0, 0, 0);
    loop {
        let (batch, reached_end) = p.pinning_keys_from(cursor, 256);
        assert!(batch.len() <= 256);
        seen += batch.len() as u64;
        steps += 1;
        if reached_end {
            break;
        }
        cursor = batch.last().map_or(cursor, |(offset, _)| offset + 1);
    }
    assert_eq!(seen, keys);
    assert_eq!(
        steps,
        keys.div_ceil(256) + u64::from(keys.is_multiple_of(256))
    );
    assert_eq!(p.checkpoint(), 0);
    p.covered("A/0", 0);
    assert_eq!(p.checkpoint(), 1);
}

#[test]
fn an_uncertain_append_holds_the_checkpoint_until_resolved() {
    let p = PartitionState::new(0, 0, budget());
    p.record("A/1", [0, 1]);
    p.covered("A/1", 1);
    let append = p.begin_append("A/2");
    p.record("A/3", [3]);
    p.covered("A/3", 3);
    assert_eq!(p.checkpoint(), 2);
    drop(append); // failed
    assert_eq!(p.checkpoint(), 2);
    p.record_found("A/2", vec![(2, vec![2])]);
    p.record_found("A/2", vec![(2, vec![2])]);
    p.resolve_uncertain("A/2");
    assert_eq!(p.offsets_after("A/2", None), vec![2]);
    assert_eq!(p.checkpoint(), 2);
    p.covered("A/2", 2);
    assert_eq!(p.checkpoint(), 4);
}

#[test]
fn the_tail_keeps_uncovered_values_and_forgets_covered_ones() {
    let budget = budget();
    let p = PartitionState::new(0, 0, budget.clone());
    p.record_value("A/1", 0, vec![0; 10]);
    p.record_value("A/2", 1, vec![1; 10]);
    p.begin_append("A/1")
        .commit(2..4, vec![vec![2; 10].into(), vec![3; 10].into()]);
    assert_eq!(p.tail_len(), 4);
    assert_eq!(budget.used(), 4 * (10 + TAIL_ENTRY_OVERHEAD));
    let values = p.tail_values(&[0, 2, 3, 9]);
    assert_eq!(values[1].as_deref(), Some(&[2u8; 10][..]));
    assert!(values[3].is_none());
    p.covered("A/1", 2);
    assert_eq!(p.tail_len(), 2);
    assert!(p.tail_values(&[0, 2])[0].is_none());
    assert_eq!(budget.used(), 2 * (10 + TAIL_ENTRY_OVERHEAD));
    drop(p);
    assert_eq!(budget.used(), 0, "a dropped partition gives its bytes back");
}

#[test]
fn a_full_budget_evicts_the_lowest_offsets_across_partitions() {
    let entry = 100 + TAIL_ENTRY_OVERHEAD;
    let budget = Arc::new(TailBudget::new(3 * entry));
    let p = PartitionState::new(0, 0, budget.clone());
    let q = PartitionState::new(1, 0, budget.clone());
    for offset in 0..5 {
        p.record_value("A/1", offset, vec![0; 100]);
    }
    assert_eq!(p.tail_len(), 3);
    assert!(
        p.tail_values(&[0, 1, 2, 3, 4])[..2]
            .iter()
            .all(Option::is_none)
    );
    assert_eq!(budget.used(), 3 * entry);
    // Another partition's tail cannot take more than the budget either.
    q.record_value("A/2", 0, vec![0; 100]);
    assert_eq!(q.tail_len(), 0);
    assert!(budget.used() <= 3 * entry);
    // The index itself is never evicted.
    assert_eq!(p.offsets_after("A/1", None), vec![0, 1, 2, 3, 4]);
    p.drop_tail();
    assert_eq!(budget.used(), 0);
    q.record_value("A/2", 1, vec![0; 100]);
    assert_eq!(q.tail_len(), 1);
    // Bigger than the whole budget: never kept.
    q.record_value("A/2", 2, vec![0; 4 * entry]);
    assert_eq!(q.tail_len(), 1);
}
