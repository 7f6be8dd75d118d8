//! `ess map preview` and `ess map from-copybook`: the map engine for a person at a terminal.
