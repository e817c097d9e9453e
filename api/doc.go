// Package api is guest-puller's daemon: the ttrpc services kata-agent
// calls and guest-puller's own, all served by one ttrpc server on a
// root-only unix socket:
//
//   - the confidential-data-hub's four services (package api of
//     guest-components' api.proto): ImagePullService, GetResourceService,
//     SealedSecretService and SecureMountService, byte-compatible with
//     what kata-agent's clients send;
//   - grpc.Image, the CCv0 agent's own image service shape, kept for
//     callers that use it (kata-agent today calls only
//     api.ImagePullService);
//   - guestpuller.v1.GuestPuller: pull with its full result, cache status,
//     listing, removal, garbage collection.
//
// The handlers translate requests into pull.Request and errors into ttrpc
// status codes; every pull goes through the same pull.Puller, so
// concurrent requests for the same layers share one download. The Puller
// is asked for at each request (Options.Puller), so a daemon can build it
// at the first request that needs it and retry after a failure without a
// restart. Resources, secrets and secure mounts are served by the
// interfaces in Options; one left nil answers Unimplemented with a message
// saying what is missing.
//
// cdhpb, agentpb and v1 hold the protobuf definitions and their generated
// code (go generate ./api).
package api
