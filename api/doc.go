// Package api is guest-puller's daemon: the ttrpc services kata-agent
// calls (the confidential-data-hub's api.ImagePullService and the agent's
// grpc.Image, byte-compatible with theirs) and guest-puller's own
// guestpuller.v1.GuestPuller (pull with its full result, cache status,
// listing, removal, garbage collection), all served by one ttrpc server on
// a root-only unix socket.
//
// The handlers translate requests into pull.Request and errors into ttrpc
// status codes; every pull goes through the same pull.Puller, so
// concurrent requests for the same layers share one download.
//
// cdhpb, agentpb and v1 hold the protobuf definitions and their generated
// code (go generate ./api).
package api
