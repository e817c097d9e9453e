package api

// The generated code is committed; regenerate after changing a .proto with
// protoc, protoc-gen-go and protoc-gen-go-ttrpc on PATH (go generate ./api).
//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-ttrpc_out=. --go-ttrpc_opt=paths=source_relative cdhpb/api.proto agentpb/image.proto v1/guestpuller.proto
