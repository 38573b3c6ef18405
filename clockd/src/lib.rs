//! clockd: time server role, skewed clocks, offset and drift estimation.
