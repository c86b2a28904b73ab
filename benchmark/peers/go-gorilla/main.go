// The chat protocol's core (docs/protocol.md: join, chats stamped with the
// joined name and relayed to everyone else, JSON ping/pong, leave, 10 chats/s
// per connection, /health, close 1001 at SIGTERM) on gorilla/websocket,
// shaped like gorilla's own chat example (examples/chat): a hub goroutine
// owns the set of clients; each client has a read pump, a write pump and a
// buffered send channel of 256 messages; a client whose channel is full is
// dropped. Differences from the example: one JSON message per frame (the
// example joins queued messages with newlines in one frame, which this
// protocol does not allow), messages up to 64 KiB, and the statistics block
// the compared servers print at exit.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

const (
	writeWait      = 10 * time.Second
	pongWait       = 60 * time.Second
	pingPeriod     = (pongWait * 9) / 10
	maxMessageSize = 65536
)

var upgrader = websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024}

type stats struct {
	relayed, rateLimited, connections, open, peak int64
}

var counters stats

// A chat to relay: its bytes (serialized once) and who sent it.
type outgoing struct {
	from *client
	data []byte
}

// The hub owns the set of upgraded clients (joined or not: all get 1001 at
// shutdown) and which of them joined (only those get chats), as in the
// example. It never writes to a socket itself: a client it drops (a slow
// consumer, shutdown) gets its close code and its send channel closed, and
// its write pump sends the close frame.
type hub struct {
	clients    map[*client]bool // client -> joined
	broadcast  chan outgoing
	register   chan *client
	join       chan *client
	unregister chan *client
	shutdown   chan chan struct{}
}

// drop ends a client's queue; its write pump then sends `code` (0: nothing).
func (h *hub) drop(c *client, code int, reason string) {
	c.closeCode, c.closeReason = code, reason
	delete(h.clients, c)
	close(c.send)
}

func (h *hub) run() {
	for {
		select {
		case c := <-h.register:
			h.clients[c] = false
		case c := <-h.join:
			if _, ok := h.clients[c]; ok {
				h.clients[c] = true
			}
		case c := <-h.unregister:
			if _, ok := h.clients[c]; ok {
				h.drop(c, 0, "")
			}
		case m := <-h.broadcast:
			for c, joined := range h.clients {
				if c == m.from || !joined {
					continue
				}
				select {
				case c.send <- m.data:
				default:
					// A slow consumer: dropped, as in the example, with 1008.
					h.drop(c, websocket.ClosePolicyViolation, "slow consumer")
				}
			}
		case done := <-h.shutdown:
			for c := range h.clients {
				h.drop(c, websocket.CloseGoingAway, "server shutting down")
			}
			close(done)
		}
	}
}

type client struct {
	hub  *hub
	conn *websocket.Conn
	send chan []byte
	// One writer at a time (gorilla allows one): the write pump, and the
	// read pump's answers to JSON pings.
	mu     sync.Mutex
	name   string
	tokens float64
	at     time.Time
	// Set by the hub before it closes send: the close the write pump sends.
	closeCode   int
	closeReason string
}

type incoming struct {
	Type string          `json:"type"`
	User *string         `json:"user"`
	Text json.RawMessage `json:"text"`
	Ts   json.RawMessage `json:"ts"`
}

type chat struct {
	Type string          `json:"type"`
	Room string          `json:"room"`
	User string          `json:"user"`
	Text json.RawMessage `json:"text"`
	Ts   json.RawMessage `json:"ts,omitempty"`
}

func validName(name string) bool {
	n := utf8.RuneCountInString(name)
	if n < 1 || n > 64 || strings.TrimSpace(name) != name {
		return false
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

func (c *client) take() bool {
	now := time.Now()
	c.tokens += now.Sub(c.at).Seconds() * 10
	if c.tokens > 10 {
		c.tokens = 10
	}
	c.at = now
	if c.tokens >= 1 {
		c.tokens--
		return true
	}
	return false
}

// readPump handles what the client sends, as in the example.
func (c *client) readPump() {
	joined := false
	defer func() {
		c.hub.unregister <- c
		c.conn.Close()
		atomic.AddInt64(&counters.open, -1)
	}()
	c.conn.SetReadLimit(maxMessageSize)
	c.conn.SetReadDeadline(time.Now().Add(pongWait))
	c.conn.SetPongHandler(func(string) error { c.conn.SetReadDeadline(time.Now().Add(pongWait)); return nil })
	for {
		_, message, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		c.conn.SetReadDeadline(time.Now().Add(pongWait))
		var in incoming
		if json.Unmarshal(message, &in) != nil {
			continue
		}
		switch in.Type {
		case "join":
			if !joined && in.User != nil && validName(*in.User) {
				joined = true
				c.name = *in.User
				c.hub.join <- c
			}
		case "chat":
			if !joined || len(in.Text) == 0 || in.Text[0] != '"' {
				continue
			}
			if !c.take() {
				atomic.AddInt64(&counters.rateLimited, 1)
				continue
			}
			data, _ := json.Marshal(chat{Type: "chat", Room: "public", User: c.name, Text: in.Text, Ts: in.Ts})
			atomic.AddInt64(&counters.relayed, 1)
			c.hub.broadcast <- outgoing{from: c, data: data}
		case "ping":
			pong := []byte(`{"type":"pong"}`)
			if len(in.Ts) > 0 {
				pong = []byte(`{"type":"pong","ts":` + string(in.Ts) + `}`)
			}
			c.mu.Lock()
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			err := c.conn.WriteMessage(websocket.TextMessage, pong)
			c.mu.Unlock()
			if err != nil {
				return
			}
		case "leave":
			// The client's close frame ends ReadMessage (gorilla sends
			// nothing after our close frame meanwhile).
			c.conn.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseNormalClosure, "bye"), time.Now().Add(writeWait))
			c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		}
	}
}

// writePump sends what the hub queued, and pings, as in the example.
func (c *client) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer ticker.Stop()
	for {
		select {
		case message, ok := <-c.send:
			c.mu.Lock()
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok {
				// Dropped by the hub: its close (1008, 1001) goes out here, and
				// the read pump, which gets the client's answer (or gives up
				// after 2 s), closes the socket.
				if c.closeCode != 0 {
					c.conn.WriteMessage(websocket.CloseMessage,
						websocket.FormatCloseMessage(c.closeCode, c.closeReason))
					c.conn.SetReadDeadline(time.Now().Add(2 * time.Second))
				}
				c.mu.Unlock()
				return
			}
			err := c.conn.WriteMessage(websocket.TextMessage, message)
			c.mu.Unlock()
			if err != nil {
				c.conn.Close()
				return
			}
		case <-ticker.C:
			c.mu.Lock()
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			err := c.conn.WriteMessage(websocket.PingMessage, nil)
			c.mu.Unlock()
			if err != nil {
				c.conn.Close()
				return
			}
		}
	}
}

func serveWs(h *hub, w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	atomic.AddInt64(&counters.connections, 1)
	open := atomic.AddInt64(&counters.open, 1)
	for {
		peak := atomic.LoadInt64(&counters.peak)
		if open <= peak || atomic.CompareAndSwapInt64(&counters.peak, peak, open) {
			break
		}
	}
	c := &client{hub: h, conn: conn, send: make(chan []byte, 256), tokens: 10, at: time.Now()}
	h.register <- c
	go c.writePump()
	go c.readPump()
}

func main() {
	port := flag.Int("port", 8080, "port")
	flag.Parse()
	h := &hub{
		clients:    make(map[*client]bool),
		broadcast:  make(chan outgoing),
		register:   make(chan *client),
		join:       make(chan *client),
		unregister: make(chan *client),
		shutdown:   make(chan chan struct{}),
	}
	go h.run()
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) { serveWs(h, w, r) })
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok\n") })
	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", listener.Addr())
	started := time.Now()
	server := &http.Server{Handler: mux}
	go server.Serve(listener)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
	listener.Close()
	done := make(chan struct{})
	h.shutdown <- done
	<-done
	deadline := time.Now().Add(2 * time.Second)
	for atomic.LoadInt64(&counters.open) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	printStats(time.Since(started))
}

// printStats prints the statistics block the compared servers print at exit.
func printStats(ran time.Duration) {
	total := atomic.LoadInt64(&counters.relayed)
	limited := atomic.LoadInt64(&counters.rateLimited)
	secs := ran.Seconds()
	avg, throughput, drop := 0.0, 0.0, 0.0
	if total > 0 {
		avg = secs * 1000 / float64(total)
	}
	if secs > 0 {
		throughput = float64(total) / secs
	}
	if total+limited > 0 {
		drop = 100 * float64(limited) / float64(total+limited)
	}
	fmt.Printf("--- Statistics ---\nTotal messages: %d\nProcessing time: %.3fs\nAverage latency: %.3fms\n"+
		"Throughput: %.2f messages/sec\nTotal connections: %d\nMessage drop rate: %.2f%%\nPeak connections: %d\n",
		total, secs, avg, throughput, atomic.LoadInt64(&counters.connections), drop, atomic.LoadInt64(&counters.peak))
}
