//! keel-projections: the read side of keel.
