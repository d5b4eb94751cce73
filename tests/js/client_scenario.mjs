// The official JavaScript socket.io-client against a running chatsvc, driven by tests/test_js_client.py.
//
//   node client_scenario.mjs <scenario> '<json parameters>'
//
// Each scenario plays what a real client does and prints, one JSON object a line, what the clients saw
// ({"step": ..., ...}); the Python test asserts on those lines. Every wait has a timeout: on the first one that
// runs out, or any other failure, the script prints {"step": "error"} and exits 1, so it never hangs.

import { io } from "socket.io-client";

const WAIT_MS = 5000;

const [scenario, rawParams] = process.argv.slice(2);
const params = JSON.parse(rawParams ?? "{}");
const opened = [];

function report(step, data = {}) {
  process.stdout.write(JSON.stringify({ step, ...data }) + "\n");
}

// A promise that fails with `what` in its message when it has not settled within WAIT_MS.
function within(what, promise) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${WAIT_MS} ms waiting for ${what}`)), WAIT_MS);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

function once(emitter, event) {
  return new Promise((resolve) => emitter.once(event, resolve));
}

// One socket.io-client socket that keeps every `message` and `exception` it receives, in arrival order.
class Client {
  constructor(name, token, options = {}) {
    this.name = name;
    this.messages = [];
    this.exceptions = [];
    this.listeners = new Set();
    // Reconnection off: a scenario reconnects on purpose, and a refused client must not retry.
    const auth = token === undefined ? {} : { token };
    this.socket = io(params.url, { auth, reconnection: false, forceNew: true, ...options });
    opened.push(this.socket);
    this.openedOn = null;
    this.upgradedTo = null;
    this.upgraded = this.watchEngine();
    this.socket.on("message", (payload) => this.received(this.messages, payload));
    this.socket.on("exception", (payload) => this.received(this.exceptions, payload));
  }

  // The Engine.IO session behind the socket: which transport opened it, and the upgrade if one happens.
  // Called again after a reconnect, since the manager then opens a new engine.
  watchEngine() {
    const engine = this.socket.io.engine;
    engine.once("open", () => (this.openedOn = engine.transport.name));
    return new Promise((resolve) =>
      engine.once("upgrade", (transport) => {
        this.upgradedTo = transport.name;
        resolve(transport.name);
      }),
    );
  }

  received(list, payload) {
    list.push(payload);
    for (const listener of this.listeners) listener();
  }

  get transport() {
    return this.socket.io.engine?.transport?.name ?? null;
  }

  connected() {
    return within(
      `${this.name} to connect`,
      new Promise((resolve, reject) => {
        this.socket.once("connect", resolve);
        this.socket.once("connect_error", reject);
      }),
    );
  }

  // The message events from index `from` on, once `count` of them satisfy `predicate`.
  waitMessages(what, count, predicate, from = 0) {
    const matching = () => this.messages.slice(from).filter(predicate);
    return within(
      `${this.name}: ${what}`,
      new Promise((resolve) => {
        const check = () => {
          if (matching().length >= count) {
            this.listeners.delete(check);
            resolve(matching());
          }
        };
        this.listeners.add(check);
        check();
      }),
    );
  }

  waitExceptions(count) {
    return within(
      `${this.name}: ${count} exception event(s)`,
      new Promise((resolve) => {
        const check = () => {
          if (this.exceptions.length >= count) {
            this.listeners.delete(check);
            resolve(this.exceptions.slice());
          }
        };
        this.listeners.add(check);
        check();
      }),
    );
  }

  call(event, payload) {
    return this.socket.timeout(WAIT_MS).emitWithAck(event, payload);
  }

  // joinRoom, then our own join notice: once it arrived, every later broadcast of the room reaches us.
  async join(userId, chatroomId, extra = {}) {
    const from = this.messages.length;
    const ack = await this.call("joinRoom", { chatroomId, userId, ...extra });
    await this.waitMessages(`own join notice of room ${chatroomId}`, 1, isJoinOf(userId), from);
    return ack;
  }
}

const isChat = (m) => m?.type === "sendMessage";
const isJoinOf = (userId) => (m) => m?.type === "joinRoom" && m.userId === userId;
const text = (sendUserId, chatroomId, content) => ({ sendUserId, chatroomId, message: { type: "text", content } });

// Alice and Bob, both on the given transports, join a room; Alice sends and Bob receives.
async function chat() {
  const { alice, bob, room } = params;
  const options = params.transports ? { transports: params.transports } : {};
  const a = new Client("alice", alice.token, options);
  const b = new Client("bob", bob.token, options);
  await Promise.all([a.connected(), b.connected()]);
  for (const c of [a, b]) report(`${c.name}.connected`, { openedOn: c.openedOn, id: c.socket.id });
  if (params.waitUpgrade) {
    await within("both upgrades", Promise.all([a.upgraded, b.upgraded]));
    for (const c of [a, b]) report(`${c.name}.upgraded`, { upgradedTo: c.upgradedTo, transport: c.transport });
  }
  report("bob.joined", { ack: await b.join(bob.id, room) });
  report("alice.joined", { ack: await a.join(alice.id, room) });
  const sent = await a.call("sendMessage", text(alice.id, room, "hello from socket.io-client"));
  report("alice.sent", { ack: sent });
  const [received] = await b.waitMessages("Alice's message", 1, isChat);
  report("bob.received", { message: received });
  for (const c of [a, b]) {
    report(`${c.name}.finally`, { transport: c.transport, upgradedTo: c.upgradedTo, connected: c.socket.connected });
  }
}

// Bob reads one message, goes offline while Alice sends three, then comes back and joins with lastMessageId.
async function recovery() {
  const { alice, bob, room } = params;
  const a = new Client("alice", alice.token);
  const b = new Client("bob", bob.token);
  await Promise.all([a.connected(), b.connected()]);
  await b.join(bob.id, room);
  await a.join(alice.id, room);
  const first = await a.call("sendMessage", text(alice.id, room, "before the gap"));
  const [seen] = await b.waitMessages("the message before the gap", 1, isChat);
  report("bob.seen", { message: seen, ackId: first.id });

  const gone = once(b.socket, "disconnect");
  b.socket.disconnect();
  report("bob.disconnected", { reason: await within("bob to disconnect", gone) });
  const missed = [];
  for (const content of ["missed 1", "missed 2", "missed 3"]) {
    missed.push(await a.call("sendMessage", text(alice.id, room, content)));
  }
  report("alice.sent", { acks: missed });

  const from = b.messages.length;
  b.socket.connect();
  b.upgraded = b.watchEngine();
  await b.connected();
  const ack = await b.join(bob.id, room, { lastMessageId: seen.message.id });
  report("bob.rejoined", { ack, openedOn: b.openedOn });
  await b.waitMessages("the three missed messages", 3, isChat, from);
  const live = await a.call("sendMessage", text(alice.id, room, "live again"));
  const after = await b.waitMessages("the live message after the replay", 4, isChat, from);
  report("bob.received", { messages: after, liveAckId: live.id });
  await within("bob's upgrade after the reconnect", b.upgraded);
  report("bob.upgraded", { upgradedTo: b.upgradedTo, transport: b.transport });
}

// Refused events answer with an error ack (or an `exception` event without one) and leave the socket connected.
async function errors() {
  const { alice, room, foreignRoom } = params;
  const a = new Client("alice", alice.token);
  await a.connected();
  const foreign = text(alice.id, foreignRoom, "not my room");
  report("send.foreign", { ack: await a.call("sendMessage", foreign) });
  report("join.foreign", { ack: await a.call("joinRoom", { chatroomId: foreignRoom, userId: alice.id }) });
  report("send.empty", { ack: await a.call("sendMessage", text(alice.id, room, "")) });
  a.socket.emit("sendMessage", foreign);
  report("send.foreign.noack", { exceptions: await a.waitExceptions(1) });
  report("still.connected", { connected: a.socket.connected });
  await a.join(alice.id, room);
  report("send.own", { ack: await a.call("sendMessage", text(alice.id, room, "still here")) });
}

// Connections without a usable token get connect_error with the server's reason, and are not connected.
async function refusals() {
  const attempts = {
    "no-token": new Client("no token", undefined),
    "bad-token": new Client("bad token", "not-a-token"),
    "bad-token-websocket": new Client("bad token over WebSocket", "not-a-token", { transports: ["websocket"] }),
  };
  // All three connect at once: listen to each before waiting on any.
  const refused = Object.values(attempts).map((client) => once(client.socket, "connect_error"));
  for (const [i, [name, client]] of Object.entries(attempts).entries()) {
    const error = await within(`${client.name}: connect_error`, refused[i]);
    report(`refused.${name}`, {
      message: error.message,
      connected: client.socket.connected,
      active: client.socket.active,
      openedOn: client.openedOn,
    });
  }
}

const scenarios = { chat, recovery, errors, refusals };

async function main() {
  const run = scenarios[scenario];
  if (!run) throw new Error(`unknown scenario ${JSON.stringify(scenario)}; known: ${Object.keys(scenarios)}`);
  await run();
}

let code = 0;
try {
  await main();
  report("done");
} catch (error) {
  code = 1;
  report("error", { message: String(error?.message ?? error) });
  console.error(error);
} finally {
  for (const socket of opened) socket.disconnect();
  // Writes to a pipe are synchronous on Linux and macOS: every reported line is out before the exit.
  process.exit(code);
}
