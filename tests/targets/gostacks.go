// A Go target for snapcore's Go stacks: `gostacks MODE REPORT`. Goroutines blocked in a
// channel receive, a sleep and a mutex, and one spinning; the program's own
// runtime.Stack(all) dump in REPORT.stacks once they are in place; "hb PID"
// heartbeats and "VIOLATION ..." lines appended to REPORT, as the C targets do.
package main

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"
)

var mu sync.Mutex
var sink int

func receiver(ch chan int) { <-ch }
func sleeper()             { time.Sleep(time.Hour) }
func locker()              { mu.Lock() }
func spinner() {
	for {
		sink++
	}
}

func main() {
	mu.Lock()
	ch := make(chan int)
	go receiver(ch)
	go sleeper()
	go locker()
	go spinner()
	time.Sleep(300 * time.Millisecond)
	buf := make([]byte, 1<<20)
	n := runtime.Stack(buf, true)
	os.WriteFile(os.Args[2]+".stacks", buf[:n], 0644)
	fmt.Println("ready")
	pid := os.Getpid()
	for {
		start := time.Now()
		time.Sleep(200 * time.Millisecond)
		f, _ := os.OpenFile(os.Args[2], os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0666)
		if time.Since(start) < 199*time.Millisecond {
			fmt.Fprintf(f, "VIOLATION sleep returned early\n")
		}
		fmt.Fprintf(f, "hb %d\n", pid)
		f.Close()
	}
}
