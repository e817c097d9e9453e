// Package idleread bounds how long a network read may wait for data. A
// registry or KBS that accepts a connection and then stops sending (no
// response headers, or a body that stalls mid-way) must not hold a pull,
// or a daemon request, forever; TCP keeps such a connection open for as
// long as the peer's kernel acknowledges it. Transport fails a request
// whose server has sent nothing for the idle time, with a *TimeoutError,
// and leaves what to do about it to the layers above: the registry
// client's one retry layer sends the request again, its blob reader
// resumes a stalled body with a Range request, the KBS client retries.
//
// The clock runs only while a read waits on the network: a caller that
// takes its time between reads (writing a layer to disk) is not idle
// traffic, and a slow but moving transfer never times out.
package idleread
