//! Domain types and decisions of hoist, with no I/O: the validated app spec, human
//! durations and sizes, schedules. Everything here is pure so that it can be tested in
//! milliseconds; crates that touch disks, processes or sockets build on it.
