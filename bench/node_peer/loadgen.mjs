// A load generator worker built on the official socket.io-client: the client real users run.
//
// It does what a worker of bench/loadgen.py does, with the same commands, plans and figures, so the
// coordinator (bench/run.py, through bench/node.py) drives either: `setup` (connect every socket and join
// its rooms), `start` (send until the window ends, then wait for the last acks), `finish` (wait until every
// receiver has every acknowledged message, count what is missing or duplicated) and `close`. Commands
// come as one JSON line each on stdin ({"command", "args"}); each reply is one JSON line on stdout.
//
// Unlike bench/rawsio.py, each socket connects the way socket.io-client does by default: Engine.IO
// long-polling first, then the upgrade to WebSocket; every packet received is decoded by the client and
// dispatched to a listener, and acks go through its ack registry. Message contents carry
// `t=<send time ns>;s=<sender>;n=<sequence>` as in bench/loadgen.py; times are process.hrtime.bigint(),
// CLOCK_MONOTONIC, the clock of Python's time.monotonic_ns(), so the coordinator's window applies as is.

import readline from "node:readline";

import { io } from "socket.io-client";

const STALL_TIMEOUT_MS = 10_000;
const ACK_WAIT_MS = 15_000;
const CONNECT_TIMEOUT_MS = 30_000;
const UPGRADE_TIMEOUT_MS = 10_000;
const CONNECT_CONCURRENCY = 64;
// --receipts (issue 15): every socket says it is typing this often, as bench/loadgen.py does.
const TYPING_EVERY_NS = 2_000_000_000n;

const now = () => process.hrtime.bigint();

function sleepUntil(tNs) {
  const delayMs = Number(tNs - now()) / 1e6;
  return delayMs > 0 ? new Promise((resolve) => setTimeout(resolve, delayMs)) : Promise.resolve();
}

// What one receiver got from each sender, checked against the senders' sequence numbers (bench/loadgen.py's Received).
class Received {
  constructor() {
    this.nextSeq = new Map();
    this.gaps = new Map();
    this.duplicates = 0;
    this.outOfOrder = 0;
  }

  record(sender, seq) {
    const expected = this.nextSeq.get(sender) ?? 0;
    if (seq === expected) {
      this.nextSeq.set(sender, seq + 1);
    } else if (seq > expected) {
      let gaps = this.gaps.get(sender);
      if (gaps === undefined) this.gaps.set(sender, (gaps = new Set()));
      for (let n = expected; n < seq; n++) gaps.add(n);
      this.nextSeq.set(sender, seq + 1);
    } else {
      const gaps = this.gaps.get(sender);
      if (gaps !== undefined && gaps.has(seq)) {
        gaps.delete(seq);
        this.outOfOrder++;
      } else {
        this.duplicates++;
      }
    }
  }

  // finals: {senderIndex: [sent, refusedSeqs]}.
  missing(senders, finals) {
    let total = 0;
    for (const sender of senders) {
      const [sent, refused] = finals[sender] ?? [0, []];
      const lost = new Set(refused);
      for (const n of this.gaps.get(sender) ?? []) if (!lost.has(n)) total++;
      for (let n = this.nextSeq.get(sender) ?? 0; n < sent; n++) if (!lost.has(n)) total++;
    }
    return total;
  }
}

function int64Base64(samples) {
  const out = new BigInt64Array(samples.length);
  for (let i = 0; i < samples.length; i++) out[i] = BigInt(samples[i]);
  return Buffer.from(out.buffer).toString("base64");
}

class Worker {
  constructor() {
    this.reset(null);
  }

  reset(plan) {
    this.plan = plan;
    this.members = [];
    this.tMeasure = 0n;
    this.tEnd = 0n;
    this.deliveries = 0;
    this.latencies = [];
    this.acks = 0;
    this.ackLatencies = [];
    this.ackErrors = 0;
    this.firstError = null;
    this.stalls = 0;
  }

  // -- commands -------------------------------------------------------------

  async setup(plan) {
    this.reset(plan);
    this.members = plan.sockets.map((spec) => ({
      spec,
      socket: null,
      received: new Received(),
      waiting: null,
      sent: 0,
      failed: [],
      pending: 0,
      onDrained: null,
      delivered: 0,
      upgraded: false,
    }));
    const errors = [];
    const connectMs = [];
    const upgradeMs = [];
    let next = 0;
    const runner = async () => {
      while (next < this.members.length) {
        const member = this.members[next++];
        try {
          await this.connect(member, connectMs, upgradeMs);
        } catch (error) {
          errors.push(`socket ${member.spec.index}: ${error?.message ?? error}`);
        }
      }
    };
    await Promise.all(Array.from({ length: CONNECT_CONCURRENCY }, runner));
    const connected = this.members.filter((m) => m.socket !== null);
    return {
      connected: connected.length,
      upgraded: connected.filter((m) => m.upgraded).length,
      connect_ms: int64Base64(connectMs.map((ms) => Math.round(ms * 1e6))),
      upgrade_ms: int64Base64(upgradeMs.map((ms) => Math.round(ms * 1e6))),
      errors: errors.slice(0, 5),
    };
  }

  async connect(member, connectMs, upgradeMs) {
    const urls = this.plan.base_urls;
    const began = now();
    const socket = io(urls[member.spec.server % urls.length], {
      auth: { token: member.spec.token },
      forceNew: true,
      reconnection: false,
      timeout: CONNECT_TIMEOUT_MS,
    });
    await new Promise((resolve, reject) => {
      socket.once("connect", resolve);
      socket.once("connect_error", (error) => {
        socket.close();
        reject(error);
      });
    });
    connectMs.push(Number(now() - began) / 1e6);
    member.socket = socket;
    socket.on("message", (data) => this.onMessage(member, data));
    // As a real client does: join at once, over long-polling, while the upgrade goes on.
    for (const room of member.spec.rooms) {
      const ack = await socket
        .timeout(CONNECT_TIMEOUT_MS)
        .emitWithAck("joinRoom", { chatroomId: room, userId: member.spec.user_id });
      if (ack !== null && typeof ack === "object" && "statusCode" in ack) {
        throw new Error(`joinRoom ${room} refused: ${JSON.stringify(ack)}`);
      }
    }
    member.upgraded = await upgraded(socket);
    if (member.upgraded) upgradeMs.push(Number(now() - began) / 1e6);
  }

  async start(tBegin, tMeasure, tEnd) {
    this.tMeasure = BigInt(tMeasure);
    this.tEnd = BigInt(tEnd);
    const senders = this.members.filter((m) => m.spec.send_room !== null && m.socket !== null);
    const loop = this.plan.mode === "closed" ? this.closedLoop : this.plan.mode === "open" ? this.openLoop : null;
    const tasks = loop === null ? [] : senders.map((m) => loop.call(this, m, BigInt(tBegin)));
    if (this.plan.receipts) {
      const typists = this.members.filter((m) => m.socket !== null && m.spec.rooms.length > 0);
      tasks.push(...typists.map((m) => this.typingLoop(m, BigInt(tBegin))));
    }
    await Promise.all(tasks);
    await Promise.all(senders.map((m) => this.acksIn(m, ACK_WAIT_MS)));
    const finals = {};
    for (const m of senders) finals[m.spec.index] = [m.sent, m.failed];
    return { finals };
  }

  async finish(finals, roomSenders, drainS) {
    const receivers = this.members
      .filter((m) => m.socket !== null)
      .map((m) => {
        const senders = new Set();
        for (const room of m.spec.rooms) for (const s of roomSenders[room] ?? []) senders.add(s);
        return [m.received, [...senders]];
      });
    const deadline = Date.now() + drainS * 1000;
    let missing;
    for (;;) {
      missing = 0;
      for (const [received, senders] of receivers) missing += received.missing(senders, finals);
      if (missing === 0 || Date.now() >= deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const byServer = new Array(this.plan.base_urls.length).fill(0);
    for (const m of this.members) byServer[m.spec.server % byServer.length] += m.delivered;
    return {
      sockets: receivers.length,
      deliveries_by_server: byServer,
      deliveries: this.deliveries,
      latencies: int64Base64(this.latencies),
      acks: this.acks,
      ack_latencies: int64Base64(this.ackLatencies),
      ack_errors: this.ackErrors,
      first_error: this.firstError,
      stalls: this.stalls,
      missing,
      duplicates: this.members.reduce((sum, m) => sum + m.received.duplicates, 0),
      out_of_order: this.members.reduce((sum, m) => sum + m.received.outOfOrder, 0),
    };
  }

  async close() {
    await Promise.all(this.members.filter((m) => m.socket !== null).map((m) => closed(m.socket)));
    this.members = [];
    return { closed: true };
  }

  // -- receiving --------------------------------------------------------------

  onMessage(member, data) {
    if (data === null || typeof data !== "object" || data.type !== "sendMessage") return;
    const content = data.message?.content;
    if (typeof content !== "string" || !content.startsWith("t=")) return;
    const t = now();
    const [stamp, from, number] = content.split(";", 3);
    const sentAt = BigInt(stamp.slice(2));
    const sender = Number(from.slice(2));
    const seq = Number(number.slice(2));
    if (t >= this.tMeasure && t < this.tEnd) {
      this.deliveries++;
      this.latencies.push(Number(t - sentAt));
    }
    member.delivered++;
    member.received.record(sender, seq);
    if (this.plan.receipts) {
      // Marks every message it receives, without an ack (--receipts-debounce is the raw generator's only).
      member.socket.emit("markRead", { chatroomId: data.message.chatroomId, messageId: data.message.id });
    }
    const waiting = member.waiting;
    if (waiting !== null && sender === member.spec.index && waiting.seq === seq) waiting.wake();
  }

  // -- sending ----------------------------------------------------------------

  async typingLoop(member, tBegin) {
    // typing: true in the socket's first room every 2 s, phase-shifted per socket (bench/loadgen.py _typing_loop).
    const room = member.spec.rooms[0];
    let at = tBegin + BigInt(Math.floor(Number(TYPING_EVERY_NS) * ((member.spec.index * 0.618) % 1)));
    while (at < this.tEnd) {
      await sleepUntil(at);
      member.socket.emit("typing", { chatroomId: room, typing: true });
      at += TYPING_EVERY_NS;
    }
  }

  send(member, seq) {
    const spec = member.spec;
    const sentAt = now();
    let content = `t=${sentAt};s=${spec.index};n=${seq}`;
    if (this.plan.pad) content += ";" + "x".repeat(this.plan.pad);
    const payload = { sendUserId: spec.user_id, chatroomId: spec.send_room, message: { type: "text", content } };
    member.sent = seq + 1;
    member.pending++;
    member.socket.emit("sendMessage", payload, (ack) => {
      const t = now();
      if (ack !== null && typeof ack === "object" && "statusCode" in ack) {
        this.ackErrors++;
        member.failed.push(seq);
        this.firstError ??= JSON.stringify(ack).slice(0, 200);
        const waiting = member.waiting;
        if (waiting !== null && waiting.seq === seq) waiting.wake();
      } else if (t >= this.tMeasure && t < this.tEnd) {
        this.acks++;
        this.ackLatencies.push(Number(t - sentAt));
      }
      member.pending--;
      if (member.pending === 0 && member.onDrained !== null) member.onDrained();
    });
  }

  async closedLoop(member, tBegin) {
    await sleepUntil(tBegin);
    let seq = 0;
    while (now() < this.tEnd) {
      const back = new Promise((resolve) => {
        const timer = setTimeout(() => {
          this.stalls++;
          resolve();
        }, STALL_TIMEOUT_MS);
        member.waiting = {
          seq,
          wake: () => {
            clearTimeout(timer);
            member.waiting = null;
            resolve();
          },
        };
      });
      this.send(member, seq);
      await back;
      seq++;
    }
    member.waiting = null;
  }

  async openLoop(member, tBegin) {
    const intervalNs = 1e9 / this.plan.rate_per_sender;
    let offset = intervalNs * member.spec.phase;
    let seq = 0;
    for (;;) {
      const at = tBegin + BigInt(Math.round(offset));
      if (at >= this.tEnd) break;
      await sleepUntil(at);
      this.send(member, seq++);
      offset += intervalNs;
    }
  }

  acksIn(member, timeoutMs) {
    if (member.pending === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        member.onDrained = null;
        resolve(false);
      }, timeoutMs);
      member.onDrained = () => {
        clearTimeout(timer);
        member.onDrained = null;
        resolve(true);
      };
    });
  }
}

// Whether the socket's Engine.IO connection has moved from long-polling to WebSocket (waits for it a while).
function upgraded(socket) {
  const engine = socket.io.engine;
  if (engine.transport.name === "websocket") return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(engine.transport.name === "websocket"), UPGRADE_TIMEOUT_MS);
    engine.once("upgrade", () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

function closed(socket) {
  const engine = socket.io.engine;
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 2000);
    engine.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
    socket.disconnect();
  });
}

const worker = new Worker();
const commands = {
  setup: (plan) => worker.setup(plan),
  start: (tBegin, tMeasure, tEnd) => worker.start(tBegin, tMeasure, tEnd),
  finish: (finals, roomSenders, drainS) => worker.finish(finals, roomSenders, drainS),
  close: () => worker.close(),
};

// One command at a time, in order, as bench/loadgen.py's workers take them.
let queue = Promise.resolve();
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const { command, args } = JSON.parse(line);
  if (command === "exit") {
    queue.then(() => process.exit(0));
    return;
  }
  queue = queue.then(async () => {
    let reply;
    try {
      reply = await commands[command](...args);
    } catch (error) {
      // The coordinator raises this; without a reply it would wait forever.
      reply = { error: `${command}: ${error?.stack ?? error}` };
    }
    process.stdout.write(JSON.stringify(reply) + "\n");
  });
});
process.stdin.on("end", () => queue.then(() => process.exit(0)));
