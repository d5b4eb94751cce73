// The Node peer: the seed's own stack, a socket.io 4 server that stores every message with better-sqlite3.
//
// It answers the events of the NestJS gateway chatsvc replaces (joinRoom, sendMessage, leaveRoom), with
// chatsvc's payloads and acks so that the same load generators drive both: joinRoom enters the room,
// broadcasts {type: "joinRoom", userId} to it and acks {chatroomId}; sendMessage stores the message (one
// INSERT, committed on its own in WAL mode with synchronous=FULL, so every message pays its own fsync),
// broadcasts {type: "sendMessage", userId, message} to the room and acks the stored row. Like the
// python-socketio baseline it accepts any token and checks no membership; the sender's profile is made
// up the way the baseline makes it (chatsvc reads it from a cache), so frames are the same size.
//
//     node server.mjs --port 3200 --db peer.db [--host 127.0.0.1]

import http from "node:http";
import { parseArgs } from "node:util";

import Database from "better-sqlite3";
import { Server } from "socket.io";

const { values: options } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "3200" },
    db: { type: "string", default: "node-peer.db" },
  },
});

const db = new Database(options.db);
db.pragma("journal_mode = WAL");
db.pragma("synchronous = FULL");
// chatsvc's chat_history table and indexes, so each insert updates the same structures.
db.exec(`
  CREATE TABLE IF NOT EXISTS chat_history (
    id            INTEGER PRIMARY KEY,
    content       TEXT    NOT NULL,
    type          INTEGER NOT NULL CHECK (type IN (0, 1, 2)),
    chatroom_id   INTEGER NOT NULL,
    sender_id     INTEGER NOT NULL,
    client_msg_id TEXT,
    create_time   TEXT    NOT NULL,
    update_time   TEXT    NOT NULL
  );
  CREATE INDEX IF NOT EXISTS chat_history_by_room ON chat_history (chatroom_id, id);
  CREATE UNIQUE INDEX IF NOT EXISTS chat_history_client_msg
    ON chat_history (sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL;
`);
const insertMessage = db.prepare(
  `INSERT INTO chat_history (content, type, chatroom_id, sender_id, client_msg_id, create_time, update_time)
   VALUES (?, ?, ?, ?, ?, ?, ?)`,
);

const MESSAGE_TYPES = { text: 0, image: 1, file: 2 };

function badRequest(message) {
  return { statusCode: 400, message, error: "Bad Request" };
}

function isId(value) {
  return Number.isSafeInteger(value) && value >= 0;
}

// The sender as chatsvc's broadcast carries it, made up the way bench/baseline_server.py makes it.
function senderOf(userId, now) {
  return {
    id: userId,
    username: `bench${userId}`,
    nickName: `Bench ${userId}`,
    email: `bench${userId}@example.com`,
    headPic: "",
    createTime: now,
  };
}

// Stores the message (one autocommit INSERT: a WAL commit and fsync of its own) and returns the row.
function storeMessage(payload) {
  const type = MESSAGE_TYPES[payload.message.type];
  const clientMsgId = typeof payload.clientMsgId === "string" ? payload.clientMsgId : null;
  const now = new Date().toISOString();
  const { lastInsertRowid } = insertMessage.run(
    payload.message.content,
    type,
    payload.chatroomId,
    payload.sendUserId,
    clientMsgId,
    now,
    now,
  );
  return {
    id: Number(lastInsertRowid),
    content: payload.message.content,
    type,
    chatroomId: payload.chatroomId,
    senderId: payload.sendUserId,
    clientMsgId,
    createTime: now,
    updateTime: now,
    sender: senderOf(payload.sendUserId, now),
  };
}

function checkSend(payload) {
  if (payload === null || typeof payload !== "object") return "payload must be an object";
  if (!isId(payload.chatroomId)) return "chatroomId must be an integer";
  if (!isId(payload.sendUserId)) return "sendUserId must be an integer";
  const message = payload.message;
  if (message === null || typeof message !== "object") return "message must be an object";
  if (!(message.type in MESSAGE_TYPES)) return "message.type must be text, image or file";
  if (typeof message.content !== "string" || message.content.trim() === "") {
    return "message.content must not be empty";
  }
  return null;
}

const httpServer = http.createServer((request, response) => {
  // The benchmark polls GET / until the server answers.
  response.writeHead(200, { "Content-Type": "text/plain" });
  response.end("node peer\n");
});
// socket.io's defaults are chatsvc's: ping every 25 s, 20 s timeout, no compression.
const io = new Server(httpServer, { cors: { origin: "*" }, serveClient: false });

io.on("connection", (socket) => {
  socket.on("joinRoom", (payload, ack) => {
    if (payload === null || typeof payload !== "object" || !isId(payload.chatroomId)) {
      if (typeof ack === "function") ack(badRequest("chatroomId must be an integer"));
      return;
    }
    const room = String(payload.chatroomId);
    socket.join(room);
    io.to(room).emit("message", { type: "joinRoom", userId: payload.userId });
    if (typeof ack === "function") ack({ chatroomId: payload.chatroomId });
  });

  socket.on("leaveRoom", (payload, ack) => {
    if (payload === null || typeof payload !== "object" || !isId(payload.chatroomId)) {
      if (typeof ack === "function") ack(badRequest("chatroomId must be an integer"));
      return;
    }
    socket.leave(String(payload.chatroomId));
    if (typeof ack === "function") ack({ chatroomId: payload.chatroomId });
  });

  socket.on("sendMessage", (payload, ack) => {
    const problem = checkSend(payload);
    if (problem !== null) {
      if (typeof ack === "function") ack(badRequest(problem));
      return;
    }
    let message;
    try {
      message = storeMessage(payload);
    } catch (error) {
      if (typeof ack === "function") ack({ statusCode: 500, message: String(error), error: "Internal Server Error" });
      return;
    }
    io.to(String(payload.chatroomId)).emit("message", { type: "sendMessage", userId: payload.sendUserId, message });
    if (typeof ack === "function") ack(message);
  });
});

function shutDown() {
  io.close();
  db.close();
  process.exit(0);
}
process.on("SIGTERM", shutDown);
process.on("SIGINT", shutDown);

httpServer.listen(Number(options.port), options.host, () => {
  console.log(`node peer on http://${options.host}:${options.port}, database ${options.db}`);
});
