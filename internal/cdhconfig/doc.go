// Package cdhconfig reads the confidential-data-hub's configuration as
// guest-puller's drop-in for it (`guest-puller cdh -c FILE`, or the binary
// run as confidential-data-hub) takes it: CDH's TOML file (guest-components,
// confidential-data-hub/example.config.toml) or, without one, its defaults
// and the kernel command line parameters CDH and image-rs read, with the
// environment variables that override them.
//
// The result says what guest-puller is to do, in guest-puller's terms;
// nothing here opens a file the configuration names or contacts a service.
//
// Where this differs from CDH, on purpose:
//   - An unknown key is an error naming it (CDH ignores it): a key
//     guest-puller does not read would be a setting silently not applied.
//   - Values CDH would only fail on later are checked at start: URIs,
//     certificates, socket addresses, credential paths.
//   - kbc.name "offline_fs_kbc" (resources from a local JSON file) is not
//     supported; set in a file it is an error, and as the default of a
//     configuration-less start (no agent.aa_kbc_params) it means no KBS.
//   - log.level takes a level (trace, debug, info, warn, error), not a
//     tracing filter expression.
package cdhconfig
