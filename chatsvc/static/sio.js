// A small Socket.IO v5 client (Engine.IO v4, WebSocket transport only) for the demo page.
//
// Packets are text frames: Engine.IO type digit, then for messages ("4") a
// Socket.IO type digit, an optional ack id, and JSON. Only the default
// namespace is used and no binary attachments are sent or expected.
//
//   const socket = new SocketClient({ auth: () => ({ token }) });
//   socket.on("message", handler);
//   socket.connect();
//   const ack = await socket.call("joinRoom", { chatroomId: 1 });

"use strict";

const EIO = { OPEN: "0", CLOSE: "1", PING: "2", PONG: "3", MESSAGE: "4", NOOP: "6" };
const SIO = { CONNECT: "0", DISCONNECT: "1", EVENT: "2", ACK: "3", CONNECT_ERROR: "4" };

class SocketClient {
  constructor({ path = "/socket.io/", auth = () => ({}), minDelay = 500, maxDelay = 10000, ackTimeout = 10000 } = {}) {
    this.path = path;
    this.auth = auth;
    this.minDelay = minDelay;
    this.maxDelay = maxDelay;
    this.ackTimeout = ackTimeout;
    this.connected = false;
    this.ws = null;
    this.handlers = new Map();
    this.acks = new Map();
    this.nextAckId = 0;
    this.attempts = 0;
    this.stopped = true;
    this.retryTimer = null;
    this.pingTimer = null;
  }

  // Register a handler; built-in events are "connect", "disconnect", "connect_error" and "status".
  on(event, handler) {
    if (!this.handlers.has(event)) this.handlers.set(event, []);
    this.handlers.get(event).push(handler);
    return this;
  }

  fire(event, ...args) {
    for (const handler of this.handlers.get(event) || []) {
      try {
        handler(...args);
      } catch (err) {
        console.error(`handler of ${event} failed`, err);
      }
    }
  }

  // Open the connection, and reopen it whenever it drops, until close().
  connect() {
    this.stopped = false;
    clearTimeout(this.retryTimer);
    this.open();
  }

  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.ws) this.ws.close();
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}${this.path}?EIO=4&transport=websocket`);
    this.ws = ws;
    this.fire("status", "connecting");
    ws.onmessage = (event) => {
      if (this.ws === ws) this.receive(String(event.data));
    };
    ws.onclose = () => {
      if (this.ws === ws) this.dropped();
    };
  }

  // The socket is gone: fail pending acks, then try again after a growing, jittered delay.
  dropped() {
    const wasConnected = this.connected;
    this.ws = null;
    this.connected = false;
    clearTimeout(this.pingTimer);
    for (const [, pending] of this.acks) pending.reject(new Error("disconnected"));
    this.acks.clear();
    if (wasConnected) this.fire("disconnect");
    this.fire("status", "offline");
    if (this.stopped) return;
    const delay = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempts) * (0.5 + Math.random() / 2);
    this.attempts += 1;
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  send(packet) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(packet);
  }

  // Drop a connection the server has stopped pinging; ws.close() alone can wait long for a dead peer.
  watch(timeoutMs) {
    clearTimeout(this.pingTimer);
    this.pingTimer = setTimeout(() => {
      const ws = this.ws;
      if (!ws) return;
      this.dropped();
      ws.close();
    }, timeoutMs);
  }

  receive(data) {
    const type = data[0];
    if (type === EIO.OPEN) {
      const handshake = JSON.parse(data.slice(1));
      this.pingDeadline = handshake.pingInterval + handshake.pingTimeout;
      this.watch(this.pingDeadline);
      this.send(EIO.MESSAGE + SIO.CONNECT + JSON.stringify(this.auth()));
    } else if (type === EIO.PING) {
      this.watch(this.pingDeadline);
      this.send(EIO.PONG);
    } else if (type === EIO.CLOSE) {
      this.ws.close();
    } else if (type === EIO.MESSAGE) {
      this.receivePacket(data.slice(1));
    }
  }

  receivePacket(packet) {
    const type = packet[0];
    // After the type: an optional ack id (digits), then the JSON payload.
    const match = /^(\d*)([\s\S]*)$/.exec(packet.slice(1));
    const id = match[1] === "" ? null : Number(match[1]);
    const payload = match[2] ? JSON.parse(match[2]) : undefined;
    if (type === SIO.CONNECT) {
      this.connected = true;
      this.attempts = 0;
      this.fire("status", "online");
      this.fire("connect");
    } else if (type === SIO.CONNECT_ERROR) {
      this.fire("connect_error", payload || {});
      // The server refused this handshake; close and let the reconnect loop (or the app) decide.
      this.ws.close();
    } else if (type === SIO.DISCONNECT) {
      this.ws.close();
    } else if (type === SIO.EVENT && Array.isArray(payload)) {
      const [event, ...args] = payload;
      this.fire(event, ...args);
      // Nothing the server emits here asks for an ack, but answer one so it never waits.
      if (id !== null) this.send(EIO.MESSAGE + SIO.ACK + id + "[]");
    } else if (type === SIO.ACK && id !== null) {
      const pending = this.acks.get(id);
      if (pending) {
        this.acks.delete(id);
        pending.resolve(Array.isArray(payload) ? payload[0] : undefined);
      }
    }
  }

  // Emit an event without waiting for an answer; false if not connected.
  emit(event, ...args) {
    if (!this.connected) return false;
    this.send(EIO.MESSAGE + SIO.EVENT + JSON.stringify([event, ...args]));
    return true;
  }

  // Emit an event and resolve with the server's acknowledgement (its first argument).
  call(event, ...args) {
    if (!this.connected) return Promise.reject(new Error("not connected"));
    const id = this.nextAckId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.acks.delete(id);
        reject(new Error(`no answer to ${event}`));
      }, this.ackTimeout);
      this.acks.set(id, {
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
      this.send(EIO.MESSAGE + SIO.EVENT + id + JSON.stringify([event, ...args]));
    });
  }
}

window.SocketClient = SocketClient;
