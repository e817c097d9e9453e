// Package wire is the protocol between a VM test and the agent in its
// guest (vmguest): one JSON object per line each way over a serial port.
// The guest first sends a Hello, then answers each Request with one
// Response of the same ID.
package wire

// Hello is the guest agent's first line, once the guest is up.
type Hello struct {
	Ready bool `json:"ready"`
	// Kernel is the guest kernel's release (uname -r).
	Kernel string `json:"kernel"`
}

// Request asks the guest to run one command.
type Request struct {
	ID   int      `json:"id"`
	Argv []string `json:"argv"`
	// Env is added to the agent's environment.
	Env   []string `json:"env,omitempty"`
	Stdin []byte   `json:"stdin,omitempty"`
	// TimeoutSeconds bounds the command; the guest kills it after that.
	TimeoutSeconds int `json:"timeoutSeconds"`
}

// Response is what the command did.
type Response struct {
	ID     int    `json:"id"`
	Code   int    `json:"code"`
	Stdout []byte `json:"stdout"`
	Stderr []byte `json:"stderr"`
	// Error says why the command could not run or was killed.
	Error string `json:"error,omitempty"`
}
