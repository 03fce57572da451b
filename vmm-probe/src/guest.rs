//! Guest programs (assembled with iced-x86) and the guest ABI.
