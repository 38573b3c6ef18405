//! History checkers.
