// Package lazy holds values that a daemon builds at the first request that
// needs them, rather than at start: what needs the KBS (a policy, keys, an
// auth file held there) or a file that may not be there yet. The daemon's
// socket is up at once, a failed build fails the request that needed it,
// and the next request tries again, without a restart.
package lazy
