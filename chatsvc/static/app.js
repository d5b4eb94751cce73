// The demo chat page: plain DOM, the HTTP API with fetch, live messages over sio.js.
// User text only ever reaches the page through textContent or checked URLs.

"use strict";

const PAGE_SIZE = 50;
const TOKEN_KEY = "chatsvc.token";
const REFRESH_MS = 30000;
const MESSAGE_TYPES = { 0: "text", 1: "image", 2: "file" };

const $ = (id) => document.getElementById(id);

const state = {
  token: localStorage.getItem(TOKEN_KEY),
  me: null,
  rooms: [],
  room: null, // the open room
  loaded: false, // whether the open room's newest page has arrived
  messages: new Map(), // id -> message of the open room
  nodes: new Map(), // id -> rendered <li>, so re-rendering keeps images loaded
  editing: null, // the open edit of one of our messages: { id, input }
  hasOlder: false,
  outbox: [], // messages not yet acknowledged: { chatroomId, clientMsgId, message, sending }
  registering: false,
  refreshTimer: null,
  attached: null, // the file picked to send: { file, previewUrl }
  avatarPreviewUrl: null,
};
let socket = null;

// -- helpers ---------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, onClick, className) {
  const node = el("button", className, label);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

const errorTimers = new Map();

function showError(id, message) {
  const node = $(id);
  node.textContent = message || "";
  clearTimeout(errorTimers.get(id));
  if (message) errorTimers.set(id, setTimeout(() => (node.textContent = ""), 8000));
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function formatTime(iso) {
  const when = new Date(iso);
  const today = new Date().toDateString() === when.toDateString();
  return today
    ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : when.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

// A URL that is safe to put in src/href: http(s), or a data: image for <img>; otherwise null.
function safeUrl(text, allowDataImage) {
  let url;
  try {
    url = new URL(text, location.href);
  } catch {
    return null;
  }
  if (url.protocol === "http:" || url.protocol === "https:") return url.href;
  if (allowDataImage && url.protocol === "data:" && /^data:image\/(png|gif|jpeg|webp);/i.test(text)) return text;
  return null;
}

// -- HTTP ------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function setToken(token) {
  state.token = token;
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

async function api(method, path, params, body) {
  const query = params ? "?" + new URLSearchParams(params) : "";
  const headers = {};
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path + query, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const fresh = resp.headers.get("token");
  if (fresh) setToken(fresh);
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!resp.ok) {
    if (resp.status === 401 && state.me) logout("Your session has ended, please log in again.");
    throw new ApiError(resp.status, (data && data.message) || `${resp.status} ${resp.statusText}`);
  }
  return data;
}

// POST /file/upload with XMLHttpRequest, which (unlike fetch) reports upload progress; the stored upload.
function uploadFile(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/file/upload");
    if (state.token) xhr.setRequestHeader("Authorization", `Bearer ${state.token}`);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      const fresh = xhr.getResponseHeader("token");
      if (fresh) setToken(fresh);
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch {
        data = null;
      }
      if (xhr.status === 201 && data) {
        onProgress(1);
        resolve(data);
        return;
      }
      if (xhr.status === 401 && state.me) logout("Your session has ended, please log in again.");
      reject(new ApiError(xhr.status, (data && data.message) || `Upload failed: ${xhr.status} ${xhr.statusText}`));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "Upload failed: the server could not be reached")));
    const form = new FormData();
    form.append("file", file);
    xhr.send(form);
  });
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

// -- log in, register, log out --------------------------------------------

function setRegistering(on) {
  state.registering = on;
  $("auth-form").classList.toggle("registering", on);
  $("tab-login").classList.toggle("active", !on);
  $("tab-register").classList.toggle("active", on);
  $("auth-submit").textContent = on ? "Register" : "Log in";
  $("auth-form").email.required = on;
  $("auth-form").password.autocomplete = on ? "new-password" : "current-password";
  showError("auth-error", "");
}

async function submitAuth(event) {
  event.preventDefault();
  const form = event.target;
  const username = form.username.value.trim();
  const password = form.password.value;
  $("auth-submit").disabled = true;
  try {
    if (state.registering) {
      const body = { username, password, nickName: form.nickName.value.trim() || username, email: form.email.value };
      if (form.captcha.value.trim()) body.captcha = form.captcha.value.trim();
      await api("POST", "/user/register", null, body);
    }
    const { user, token } = await api("POST", "/user/login", null, { username, password });
    setToken(token);
    form.password.value = "";
    enter(user);
  } catch (err) {
    showError("auth-error", err.message);
  } finally {
    $("auth-submit").disabled = false;
  }
}

async function sendCode() {
  try {
    await api("GET", "/user/register-captcha", { address: $("auth-form").email.value });
    showError("auth-error", "Code sent: check your mail.");
  } catch (err) {
    showError("auth-error", err.message);
  }
}

function logout(message) {
  if (socket) socket.close();
  socket = null;
  clearInterval(state.refreshTimer);
  setToken(null);
  Object.assign(state, { me: null, rooms: [], room: null, loaded: false, outbox: [], editing: null });
  clearSearch();
  state.messages.clear();
  state.nodes.clear();
  history.replaceState(null, "", location.pathname);
  $("main").classList.remove("room-open");
  $("main").hidden = true;
  $("auth").hidden = false;
  showError("auth-error", message || "");
}

function enter(user) {
  state.me = user;
  $("auth").hidden = true;
  $("main").hidden = false;
  $("me-name").textContent = `${user.nickName} (@${user.username})`;
  showAvatar();
  connectSocket();
  refreshSide();
  state.refreshTimer = setInterval(refreshSide, REFRESH_MS);
}

// -- the live connection -------------------------------------------------

function connectSocket() {
  socket = new SocketClient({ auth: () => ({ token: state.token }) });
  socket.on("status", (status) => {
    const conn = $("conn");
    conn.dataset.state = status;
    conn.textContent = status === "connecting" ? "connecting…" : status;
  });
  socket.on("connect", () => {
    receipts.onConnect();
    if (state.room && state.loaded) joinRoom(state.room);
    for (const item of state.outbox) deliver(item);
  });
  socket.on("connect_error", async (err) => {
    // A dead token means logging in again (api() does that on 401); anything else is retried.
    try {
      await api("GET", "/user/info");
      showError("chat-error", err.message);
    } catch {}
  });
  socket.on("message", onSocketMessage);
  socket.on("exception", (err) => showError("chat-error", err.message));
  socket.connect();
}

function onSocketMessage(event) {
  receipts.onEvent(event);
  if (event.type === "sendMessage") {
    addMessages([event.message]);
  } else if (event.type === "messageUpdated") {
    showUpdated(event.message);
  } else if (event.type === "messageDeleted") {
    showDeleted(event.chatroomId, event.messageId);
  } else if (event.type === "quitRoom" || event.type === "joinRoom") {
    const room = state.room;
    const known = room && room.userIds.includes(event.userId);
    // Every reconnecting socket announces itself; only a change of membership matters here.
    if (room && (event.type === "joinRoom") !== known) {
      if (event.type === "quitRoom" && event.userId === state.me.id) showError("side-error", "You left this group.");
      refreshRooms().then(showMembers);
    }
  } else if (LIVE_NOTICES[event.type]) {
    LIVE_NOTICES[event.type](event);
  }
}

// Join the open room, catching up from the newest message we have.
async function joinRoom(room) {
  const newest = Math.max(0, ...state.messages.keys());
  let ack;
  try {
    ack = await socket.call("joinRoom", { chatroomId: room.id, userId: state.me.id, lastMessageId: newest });
  } catch {
    return; // disconnected: the next connect joins again
  }
  if (state.room !== room) return;
  if (ack && ack.statusCode) showError("chat-error", ack.message);
  else if (ack && ack.recovered === false) await loadNewest(room, true);
}

// -- rooms ---------------------------------------------------------------

async function refreshSide() {
  await Promise.all([refreshRooms(), refreshFriends()]);
}

// Rooms and friends arrive live; coming back to the page also catches what a lost connection missed.
function refreshWhenShown() {
  if (state.me && document.visibilityState === "visible") refreshSide();
}

// Lists are refreshed by timers and by actions at once: only the latest answer is shown.
const asked = { rooms: 0, friends: 0, members: 0, search: 0 };

async function refreshRooms() {
  const mine = ++asked.rooms;
  let rooms;
  try {
    rooms = await api("GET", "/chatroom/list");
  } catch (err) {
    showError("side-error", err.message);
    return [];
  }
  if (mine !== asked.rooms || !state.me) return rooms;
  state.rooms = rooms;
  const current = state.room && state.rooms.find((room) => room.id === state.room.id);
  if (current) {
    Object.assign(state.room, current); // keep its identity: loads in flight compare against it
    showRoomHead();
  } else if (state.room) {
    closeRoom();
  }
  renderRooms();
  receipts.watchRooms();
  const wanted = Number(new URLSearchParams(location.hash.slice(1)).get("room"));
  if (!state.room && wanted) {
    const room = state.rooms.find((r) => r.id === wanted);
    if (room) openRoom(room);
  }
  return rooms;
}

function renderRooms() {
  const items = state.rooms.map((room) => {
    const li = el("li");
    const open = button(room.name, () => openRoom(room), "room-link");
    open.dataset.roomId = room.id;
    if (state.room && state.room.id === room.id) open.classList.add("active");
    open.append(el("small", "muted", room.type ? ` group · ${room.userCount}` : ""));
    receipts.decorate(open, room);
    li.append(open);
    return li;
  });
  $("rooms").replaceChildren(...items);
  if (!items.length) $("rooms").append(el("li", "muted", "No rooms yet."));
}

async function openRoom(room) {
  if (state.room && state.room.id === room.id) return;
  if (state.room) receipts.stopTyping(state.room.id); // the page stays in every room, for live unread counts
  state.room = room;
  state.loaded = false;
  state.hasOlder = false;
  state.editing = null;
  state.messages.clear();
  state.nodes.clear();
  history.replaceState(null, "", `#room=${room.id}`);
  $("empty").hidden = true;
  $("room").hidden = false;
  $("main").classList.add("room-open");
  // Each room starts with plain text, whatever type was picked in the last one.
  $("send-form").type.value = "text";
  clearAttachment();
  showError("chat-error", "");
  showRoomHead();
  renderRooms();
  renderMessages({ toBottom: true });
  showMembers();
  await loadNewest(room, false);
  if (state.room === room && socket && socket.connected) await joinRoom(room);
  $("send-form").content.focus();
}

function closeRoom() {
  state.room = null;
  state.editing = null;
  state.messages.clear();
  state.nodes.clear();
  history.replaceState(null, "", location.pathname);
  $("room").hidden = true;
  $("empty").hidden = false;
  $("main").classList.remove("room-open");
}

// The phone layout's way from a room back to the rooms and friends.
function backToRooms() {
  if (state.room) receipts.stopTyping(state.room.id); // the page stays in every room, for live unread counts
  closeRoom();
  renderRooms();
}

function showRoomHead() {
  $("room-name").textContent = state.room.name;
  $("member-form").hidden = !state.room.type;
}

async function showMembers() {
  const room = state.room;
  if (!room) return;
  const mine = ++asked.members;
  if (!room.type) {
    $("room-members").textContent = "one-to-one chat";
    return;
  }
  try {
    const members = await api("GET", "/chatroom/members", { chatroomId: room.id });
    if (state.room === room && mine === asked.members) {
      const count = `${members.length} member${members.length === 1 ? "" : "s"}`;
      $("room-members").textContent = `${count}: ${members.map((m) => m.nickName).join(", ")}`;
    }
  } catch (err) {
    showError("chat-error", err.message);
  }
}

// Run a one-field form: its input is cleared at once, so the next entry can be typed, and restored on failure.
async function submitField(event, errorId, action) {
  event.preventDefault();
  const input = event.target.querySelector("input");
  const value = input.value.trim();
  input.value = "";
  try {
    await action(value);
  } catch (err) {
    if (!input.value) input.value = value;
    showError(errorId, err.message);
  }
}

function createGroup(event) {
  return submitField(event, "side-error", async (name) => {
    const id = await api("GET", "/chatroom/create-group", { name });
    const rooms = await refreshRooms();
    const room = rooms.find((r) => r.id === id);
    if (room) openRoom(room);
  });
}

function addMember(event) {
  return submitField(event, "chat-error", async (joinUsername) => {
    await api("GET", `/chatroom/join/${state.room.id}`, { joinUsername });
    await refreshRooms();
    await showMembers();
  });
}

async function leaveGroup() {
  if (!confirm(`Leave ${state.room.name}?`)) return;
  try {
    await api("GET", `/chatroom/quit/${state.room.id}`, { quitUserId: state.me.id });
    closeRoom();
    await refreshRooms();
  } catch (err) {
    showError("chat-error", err.message);
  }
}

// -- messages --------------------------------------------------------------

// Load the newest page; with reset, drop what we had (except anything newer that arrived meanwhile).
async function loadNewest(room, reset) {
  let page;
  try {
    page = await api("GET", "/chat-history/list", { chatroomId: room.id, limit: PAGE_SIZE });
  } catch (err) {
    showError("chat-error", err.message);
    return;
  }
  if (state.room !== room) return;
  if (reset) {
    const newest = page.length ? page[page.length - 1].id : 0;
    for (const id of [...state.messages.keys()]) if (id <= newest) state.messages.delete(id);
  }
  state.loaded = true;
  state.hasOlder = page.length === PAGE_SIZE;
  addMessages(page, { toBottom: true });
}

async function loadOlder() {
  const room = state.room;
  const oldest = Math.min(...state.messages.keys());
  let page;
  try {
    page = await api("GET", "/chat-history/list", { chatroomId: room.id, limit: PAGE_SIZE, beforeId: oldest });
  } catch (err) {
    showError("chat-error", err.message);
    return;
  }
  if (state.room !== room) return;
  state.hasOlder = page.length === PAGE_SIZE;
  addMessages(page, { keepPosition: true });
}

function addMessages(messages, options = {}) {
  let changed = false;
  for (const message of messages) {
    if (!state.room || message.chatroomId !== state.room.id || state.messages.has(message.id)) continue;
    state.messages.set(message.id, message);
    changed = true;
  }
  if (changed || options.toBottom || options.keepPosition) renderMessages(options);
  if (changed) receipts.markOpenRoomRead();
}

function renderMessages({ toBottom = false, keepPosition = false } = {}) {
  const box = $("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  const atBottom = fromBottom - box.clientHeight < 60;
  const ids = [...state.messages.keys()].sort((a, b) => a - b);
  const items = ids.map((id) => {
    if (!state.nodes.has(id)) state.nodes.set(id, shownSafely(messageNode, state.messages.get(id)));
    return state.nodes.get(id);
  });
  // A message can be broadcast back before its ack arrives: show it once, as stored.
  const stored = new Set(ids.map((id) => state.messages.get(id).clientMsgId).filter(Boolean));
  for (const item of state.outbox) {
    if (state.room && item.chatroomId === state.room.id && !stored.has(item.clientMsgId)) {
      items.push(shownSafely(pendingNode, item, "msg mine pending"));
    }
  }
  // Re-inserting the list's nodes takes the focus away from an open edit (or a button): give it back.
  const focused = box.contains(document.activeElement) ? document.activeElement : null;
  $("message-list").replaceChildren(...items);
  if (focused && focused.isConnected && document.activeElement !== focused) focused.focus();
  $("older").hidden = !state.hasOlder;
  if (keepPosition) box.scrollTop = box.scrollHeight - fromBottom;
  else if (toBottom || atBottom) box.scrollTop = box.scrollHeight;
}

// A message that cannot be rendered (a file URL with malformed percent-encoding, say) must not take the
// rest of the room with it: it is shown as plain text instead.
function shownSafely(render, item, className = "msg") {
  try {
    return render(item);
  } catch (err) {
    console.warn("showing a message as plain text:", err);
    const message = (item && item.message) || item || {};
    const li = el("li", className);
    if (message.id !== undefined) li.dataset.id = message.id;
    li.append(el("p", "text", String(message.content ?? "")));
    return li;
  }
}

function messageNode(message) {
  const li = el("li", "msg");
  li.dataset.id = message.id;
  if (message.senderId === state.me.id) li.classList.add("mine");
  // Set by the server for messages from the service itself; a nickName can be anything.
  if (message.system === true) li.classList.add("system");
  const sender = message.sender || {};
  const meta = el("div", "meta");
  const when = el("time", "when", formatTime(message.createTime));
  when.dateTime = message.createTime;
  when.title = new Date(message.createTime).toLocaleString();
  meta.append(el("span", "who", sender.nickName || sender.username || `user ${message.senderId}`), when);
  if (message.deleted) {
    li.classList.add("deleted");
    li.append(meta, el("p", "text", "message deleted"));
    return li;
  }
  if (message.editedAt) meta.append(editedMark(message.editedAt));
  if (message.senderId === state.me.id) meta.append(messageActions(message));
  li.append(meta, messageBody(MESSAGE_TYPES[message.type], message.content));
  return li;
}

function pendingNode(item) {
  const li = el("li", "msg mine pending");
  const meta = el("div", "meta");
  meta.append(el("span", "who", state.me.nickName), el("span", "when", "sending…"));
  li.append(meta, messageBody(item.message.type, item.message.content));
  return li;
}

function messageBody(type, content) {
  if (type === "image") {
    const url = safeUrl(content, true);
    if (url) {
      const img = el("img", "image");
      img.src = url;
      img.alt = "image";
      img.loading = "lazy";
      return img;
    }
  } else if (type === "file") {
    const url = safeUrl(content, false);
    if (url) {
      // The page sends an upload's original name as the URL's fragment, which never reaches the server.
      // Throws on malformed percent-encoding (%E0%A4%A): shownSafely then shows the message as text.
      const parsed = new URL(url);
      const name =
        decodeURIComponent(parsed.hash.slice(1)) || decodeURIComponent(parsed.pathname.split("/").pop() || "") || url;
      const link = el("a", "file", name);
      link.href = url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      return link;
    }
  }
  return el("p", "text", content);
}

async function submitMessage(event) {
  event.preventDefault();
  const form = event.target;
  const content = form.content.value;
  if (!content.trim() || !state.room) return;
  const item = {
    chatroomId: state.room.id,
    clientMsgId: randomId(),
    message: { type: form.type.value, content },
    sending: false,
  };
  state.outbox.push(item);
  form.content.value = "";
  // An image or file URL is a one-off: the next message is text again unless picked anew.
  form.type.value = "text";
  renderMessages({ toBottom: true });
  deliver(item);
}

// Send one outbox message; if the connection drops first, the next connect sends it again
// with the same clientMsgId, which the server stores at most once.
async function deliver(item) {
  if (item.sending || !socket || !socket.connected) return;
  item.sending = true;
  let ack;
  try {
    ack = await socket.call("sendMessage", {
      sendUserId: state.me.id,
      chatroomId: item.chatroomId,
      clientMsgId: item.clientMsgId,
      message: item.message,
    });
  } catch {
    item.sending = false;
    return;
  }
  state.outbox = state.outbox.filter((other) => other !== item);
  if (ack && ack.statusCode) {
    showError("chat-error", ack.message);
    renderMessages();
  } else {
    addMessages([ack], { toBottom: true });
  }
}

// -- attachments: pick, preview, upload with progress, send as an image or file message ----------------

// Long names are cut so that the URL and the name stay within a message's length.
const ATTACHED_NAME_MAX = 40;

function pickAttachment() {
  if (state.room) $("attach-input").click();
}

function showAttachment(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file || !state.room) return;
  clearAttachment();
  state.attached = { file, previewUrl: null };
  const preview = $("attach-preview");
  if (file.type.startsWith("image/")) {
    state.attached.previewUrl = URL.createObjectURL(file);
    preview.src = state.attached.previewUrl;
    preview.hidden = false;
  }
  $("attach-name").textContent = `${file.name} (${formatSize(file.size)})`;
  $("attach-send").disabled = false;
  $("attachment").hidden = false;
  $("attach-send").focus();
}

function clearAttachment() {
  if (state.attached && state.attached.previewUrl) URL.revokeObjectURL(state.attached.previewUrl);
  state.attached = null;
  $("attachment").hidden = true;
  $("attach-preview").hidden = true;
  $("attach-preview").removeAttribute("src");
  $("attach-progress").hidden = true;
}

async function sendAttachment() {
  const attached = state.attached;
  const room = state.room;
  if (!attached || !room) return;
  const bar = $("attach-progress");
  bar.value = 0;
  bar.hidden = false;
  $("attach-send").disabled = true;
  let stored;
  try {
    stored = await uploadFile(attached.file, (done) => (bar.value = done));
  } catch (err) {
    showError("chat-error", err.message);
    if (state.attached === attached) {
      bar.hidden = true;
      $("attach-send").disabled = false;
    }
    return;
  }
  if (state.attached === attached) clearAttachment();
  const type = stored.contentType.startsWith("image/") ? "image" : "file";
  const name = attached.file.name.slice(0, ATTACHED_NAME_MAX);
  const content = type === "file" ? `${stored.url}#${encodeURIComponent(name)}` : stored.url;
  const item = { chatroomId: room.id, clientMsgId: randomId(), message: { type, content }, sending: false };
  state.outbox.push(item);
  if (state.room === room) renderMessages({ toBottom: true });
  deliver(item);
}

// -- the profile picture ---------------------------------------------------------

function showAvatar() {
  const img = $("me-avatar");
  const url = state.me && state.me.headPic ? safeUrl(state.me.headPic, true) : null;
  if (url) img.src = url;
  else img.removeAttribute("src");
  img.hidden = !url;
}

// Upload the picked image at once, then ask for the code a profile change needs (POST /user/update).
async function pickAvatar(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  const form = $("avatar-form");
  form.hidden = false;
  form.dataset.url = "";
  form.captcha.value = "";
  showError("avatar-error", "");
  if (state.avatarPreviewUrl) URL.revokeObjectURL(state.avatarPreviewUrl);
  state.avatarPreviewUrl = URL.createObjectURL(file);
  $("avatar-preview").src = state.avatarPreviewUrl;
  const bar = $("avatar-progress");
  bar.value = 0;
  $("avatar-save").disabled = true;
  try {
    const stored = await uploadFile(file, (done) => (bar.value = done));
    if (!stored.contentType.startsWith("image/")) throw new ApiError(415, "Pick an image for your picture.");
    form.dataset.url = stored.url;
    await api("GET", "/user/update/captcha");
    $("avatar-save").disabled = false;
    form.captcha.focus();
  } catch (err) {
    showError("avatar-error", err.message);
  }
}

async function saveAvatar(event) {
  event.preventDefault();
  const form = event.target;
  if (!form.dataset.url) return;
  try {
    const user = await api("POST", "/user/update", undefined, {
      headPic: form.dataset.url,
      email: state.me.email,
      captcha: form.captcha.value.trim(),
    });
    state.me = user;
    showAvatar();
    closeAvatarForm();
  } catch (err) {
    showError("avatar-error", err.message);
  }
}

function closeAvatarForm() {
  $("avatar-form").hidden = true;
  if (state.avatarPreviewUrl) URL.revokeObjectURL(state.avatarPreviewUrl);
  state.avatarPreviewUrl = null;
  $("avatar-preview").removeAttribute("src");
}

// -- friends -----------------------------------------------------------------

async function refreshFriends() {
  const mine = ++asked.friends;
  let friends, requests;
  try {
    [friends, requests] = await Promise.all([
      api("GET", "/friendship/list"),
      api("GET", "/friendship/request_list"),
    ]);
  } catch (err) {
    if (err.status === 404) {
      $("friend-form").hidden = true;
      showError("side-error", "This server has no friend list.");
    } else {
      showError("side-error", err.message);
    }
    return;
  }
  if (mine !== asked.friends || !state.me) return;
  const pending = requests.toMe.filter((r) => r.status === 0);
  const waiting = requests.fromMe.filter((r) => r.status === 0);
  $("requests").replaceChildren(
    ...pending.map((request) => {
      const who = request.fromUser;
      const li = el("li", "request");
      const text = el("span", "", `${who.nickName} (@${who.username}) asks to be friends`);
      if (request.reason) text.append(el("q", "", request.reason));
      li.append(
        text,
        button("Agree", () => answerRequest("agree", who.id)),
        button("Reject", () => answerRequest("reject", who.id), "link"),
      );
      return li;
    }),
    ...waiting.map((request) => el("li", "muted", `Waiting for @${request.toUser.username} to agree`)),
  );
  $("friends").replaceChildren(
    ...friends.map((friend) => {
      const li = el("li", "friend");
      li.dataset.username = friend.username;
      li.dataset.userId = friend.id;
      li.append(el("span", "", `${friend.nickName} (@${friend.username})`), button("Chat", () => chatWith(friend)));
      return li;
    }),
  );
  if (!friends.length && !pending.length && !waiting.length) {
    $("friends").append(el("li", "muted", "No friends yet: add someone by username to chat one-to-one."));
  }
  loadPresence(friends.map((friend) => friend.id));
}

function addFriend(event) {
  return submitField(event, "side-error", async (username) => {
    await api("POST", "/friendship/add", null, { username, reason: "" });
    await refreshFriends();
  });
}

function chatWithUsername(event) {
  return submitField(event, "side-error", async (username) => {
    const user = await api("GET", "/user/find", { username });
    await chatWith(user);
  });
}

async function answerRequest(verb, userId) {
  try {
    await api("GET", `/friendship/${verb}/${userId}`);
    await refreshFriends();
  } catch (err) {
    showError("side-error", err.message);
  }
}

async function chatWith(friend) {
  try {
    const id = await api("GET", "/chatroom/create-one-to-one", { friendId: friend.id });
    const rooms = await refreshRooms();
    const room = rooms.find((r) => r.id === id);
    if (room) openRoom(room);
  } catch (err) {
    showError("side-error", err.message);
  }
}

// -- start -----------------------------------------------------------------

// -- read positions, unread counts and typing (issue 15) ------------------------------------------------
// The page joins every room it lists, so the list's unread counts and previews stay live; the open room is
// marked read as messages show, and the composer sends typing notices.

const TYPING_EVERY_MS = 2000;

const receipts = {
  joined: new Set(), // rooms joined on this connection
  typingSent: 0, // when the open room last heard typing: true from us
  typingRoom: null,
  typists: new Map(), // userId -> name, of the open room

  start() {
    const input = $("send-form").content;
    input.addEventListener("input", () => receipts.typed());
    input.addEventListener("blur", () => state.room && receipts.stopTyping(state.room.id));
  },

  onConnect() {
    receipts.joined.clear();
    receipts.typingRoom = null;
    receipts.watchRooms();
  },

  // Join the listed rooms not yet joined (the open room's own join catches up on missed messages).
  watchRooms() {
    if (!socket || !socket.connected) return;
    for (const room of state.rooms) {
      if (receipts.joined.has(room.id)) continue;
      receipts.joined.add(room.id);
      if (!(state.room && state.room.id === room.id)) {
        socket.call("joinRoom", { chatroomId: room.id, userId: state.me.id }).catch(() => {});
      }
    }
  },

  onEvent(event) {
    if (event.type === "sendMessage") receipts.messageArrived(event.message);
    else if (event.type === "read") receipts.readArrived(event);
    else if (event.type === "typing") receipts.typingArrived(event);
  },

  messageArrived(message) {
    const room = state.rooms.find((r) => r.id === message.chatroomId);
    if (!room || (room.lastMessage && room.lastMessage.id >= message.id)) return;
    room.lastMessage = message;
    if (message.senderId === state.me.id) {
      room.lastReadId = message.id;
      room.unreadCount = 0;
    } else if (message.id > room.lastReadId) {
      room.unreadCount += 1;
    }
    receipts.typists.delete(message.senderId);
    receipts.showTypists();
    renderRooms();
  },

  // Our own position, moved here or in another tab.
  readArrived(event) {
    if (event.userId !== state.me.id) return;
    const room = state.rooms.find((r) => r.id === event.chatroomId);
    if (!room || event.lastReadId <= room.lastReadId) return;
    room.lastReadId = event.lastReadId;
    if (room.lastMessage && event.lastReadId >= room.lastMessage.id) room.unreadCount = 0;
    else refreshRooms(); // how many are left unread is the server's to count
    renderRooms();
  },

  typingArrived(event) {
    if (!state.room || event.chatroomId !== state.room.id || event.userId === state.me.id) return;
    if (event.typing) {
      // A one-to-one room is named after the other member; in a group, a message of theirs names them.
      const theirs = [...state.messages.values()].find((m) => m.senderId === event.userId);
      const name = !state.room.type ? state.room.name : theirs && theirs.sender && theirs.sender.nickName;
      receipts.typists.set(event.userId, name || "Someone");
    } else {
      receipts.typists.delete(event.userId);
    }
    receipts.showTypists();
  },

  showTypists() {
    const names = [...receipts.typists.values()];
    const line = $("typing");
    line.textContent = names.length ? `${names.join(", ")} ${names.length > 1 ? "are" : "is"} typing…` : "";
    line.hidden = !names.length;
  },

  markOpenRoomRead() {
    const room = state.room;
    if (!room || !socket || !socket.connected || document.visibilityState !== "visible") return;
    const newest = Math.max(0, ...state.messages.keys());
    const listed = state.rooms.find((r) => r.id === room.id);
    if (!listed || newest <= listed.lastReadId) return;
    listed.lastReadId = newest;
    listed.unreadCount = 0;
    renderRooms();
    socket.call("markRead", { chatroomId: room.id, messageId: newest }).catch(() => {});
  },

  typed() {
    if (!state.room || !socket || !socket.connected) return;
    const now = Date.now();
    if (receipts.typingRoom === state.room.id && now - receipts.typingSent < TYPING_EVERY_MS) return;
    receipts.typingRoom = state.room.id;
    receipts.typingSent = now;
    socket.call("typing", { chatroomId: state.room.id, typing: true }).catch(() => {});
  },

  stopTyping(roomId) {
    receipts.typists.clear();
    receipts.showTypists();
    if (receipts.typingRoom !== roomId) return;
    receipts.typingRoom = null;
    if (socket && socket.connected) socket.call("typing", { chatroomId: roomId, typing: false }).catch(() => {});
  },

  decorate(link, room) {
    if (room.unreadCount > 0) link.append(el("span", "unread", String(room.unreadCount)));
    const last = room.lastMessage;
    if (!last) return;
    const kind = last.deleted ? "message deleted" : { 1: "[picture]", 2: "[file]" }[last.type];
    const shown = kind || last.content;
    const who = last.senderId === state.me.id ? "You" : (last.sender && last.sender.nickName) || "";
    link.append(el("span", "preview", who ? `${who}: ${shown}` : shown));
  },
};

// -- presence and the live room list (issue 15) ------------------------------

const online = new Map(); // user id -> whether they are online

// Notices on the user's own sockets: rooms and friends appear and go without a reload.
const LIVE_NOTICES = {
  roomAdded: () => refreshRooms(),
  roomRemoved: () => refreshRooms(),
  friendRequest: () => refreshFriends(),
  friendAdded: () => refreshFriends(),
  presence: (event) => {
    online.set(event.userId, event.online);
    showPresence();
  },
};

async function loadPresence(ids) {
  if (!ids.length) return;
  try {
    for (const entry of await api("GET", "/user/presence", { ids: ids.join(",") })) online.set(entry.id, entry.online);
  } catch {
    return; // the dots are a nicety: the list works without them
  }
  showPresence();
}

// A dot before each friend: filled while they are online.
function showPresence() {
  for (const li of document.querySelectorAll("#friends li.friend")) {
    const isOnline = online.get(Number(li.dataset.userId)) === true;
    let dot = li.querySelector(".presence");
    if (!dot) {
      dot = el("span", "presence");
      li.prepend(dot);
    }
    dot.dataset.online = String(isOnline);
    dot.title = isOnline ? "online" : "offline";
  }
}

// -- edit and delete your own messages, and search (issue 15) ------------------------------------------------
// Edits and deletions arrive as notices on the rooms the page has joined, so everyone's page shows them live.

function editedMark(editedAt) {
  const mark = el("span", "edited", "(edited)");
  mark.title = `edited ${new Date(editedAt).toLocaleString()}`;
  return mark;
}

function messageActions(message) {
  const actions = el("span", "actions");
  // Only text can be edited; anything of ours can be deleted.
  if (MESSAGE_TYPES[message.type] === "text") actions.append(button("Edit", () => startEdit(message.id), "link"));
  actions.append(button("Delete", () => deleteMessage(message.id), "link"));
  return actions;
}

// Replace the message's text with an input: Enter saves, Escape cancels.
function startEdit(id) {
  const message = state.messages.get(id);
  const node = state.nodes.get(id);
  const text = node && node.querySelector(".text");
  if (!message || !text) return;
  cancelEdit();
  const input = el("input", "edit-input");
  input.value = message.content;
  input.maxLength = $("send-form").content.maxLength;
  input.setAttribute("aria-label", "Edit your message: Enter saves, Escape cancels");
  input.title = "Enter saves, Escape cancels";
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      saveEdit(id, input);
    } else if (event.key === "Escape") {
      event.preventDefault();
      cancelEdit();
    }
  });
  text.replaceWith(input);
  node.classList.add("editing");
  state.editing = { id, input };
  input.focus();
}

function cancelEdit() {
  const editing = state.editing;
  if (!editing) return;
  state.editing = null;
  state.nodes.delete(editing.id); // rendered anew from the message as stored
  renderMessages();
}

async function saveEdit(id, input) {
  const message = state.messages.get(id);
  if (!message || input.disabled) return;
  const content = input.value;
  if (content === message.content) return cancelEdit();
  if (!content.trim()) {
    showError("chat-error", "A message cannot be empty: delete it instead.");
    return;
  }
  input.disabled = true;
  let ack;
  try {
    ack = await socket.call("editMessage", { messageId: id, content });
  } catch {
    ack = { statusCode: 0, message: "Not connected: the edit was not saved, try again." };
  }
  input.disabled = false;
  if (ack && ack.statusCode !== undefined) {
    // The edit stays open, to fix or to cancel.
    showError("chat-error", ack.message);
    if (state.editing && state.editing.input === input) input.focus();
    return;
  }
  if (state.editing && state.editing.input === input) state.editing = null;
  showUpdated(ack);
}

async function deleteMessage(id) {
  if (!socket || !confirm("Delete this message for everyone?")) return;
  let ack;
  try {
    ack = await socket.call("deleteMessage", { messageId: id });
  } catch {
    ack = { statusCode: 0, message: "Not connected: the message was not deleted, try again." };
  }
  if (ack && ack.statusCode !== undefined) showError("chat-error", ack.message);
  else showDeleted(ack.chatroomId, ack.id);
}

// A message of some room changed: its place in the open room, and the room list's preview if it is the last one.
function showChanged(chatroomId, id, changed) {
  const room = state.rooms.find((r) => r.id === chatroomId);
  if (room && room.lastMessage && room.lastMessage.id === id) {
    room.lastMessage = changed(room.lastMessage);
    renderRooms();
  }
  const message = state.room && state.room.id === chatroomId && state.messages.get(id);
  if (!message) return;
  state.messages.set(id, changed(message));
  if (state.editing && state.editing.id === id) state.editing = null;
  state.nodes.delete(id);
  renderMessages();
}

function showUpdated(message) {
  showChanged(message.chatroomId, message.id, (old) => ({ ...old, ...message }));
}

function showDeleted(chatroomId, id) {
  showChanged(chatroomId, id, (old) => ({ ...old, content: "", deleted: true }));
}

const SEARCH_LIMIT = 20;
// Opening a search hit pages back through the room's history for it, this far at most.
const SEARCH_PAGES_BACK = 20;

const search = { params: null, hits: [], hasMore: false };

async function submitSearch(event) {
  event.preventDefault();
  const form = event.target;
  const params = { q: form.q.value.trim(), limit: SEARCH_LIMIT };
  if (form.scope.value === "room") {
    if (!state.room) {
      showError("search-error", "Open a room to search in it, or search all rooms.");
      return;
    }
    params.chatroomId = state.room.id;
  }
  search.params = params;
  search.hits = [];
  await searchMore();
}

// The next page of hits: older than the last one shown.
async function searchMore() {
  const mine = ++asked.search;
  const params = { ...search.params };
  if (search.hits.length) params.beforeId = search.hits[search.hits.length - 1].id;
  let hits;
  try {
    hits = await api("GET", "/chat-history/search", params);
  } catch (err) {
    showError("search-error", err.message);
    return;
  }
  if (mine !== asked.search || !state.me) return;
  showError("search-error", "");
  search.hits.push(...hits);
  search.hasMore = hits.length === SEARCH_LIMIT;
  renderSearch();
}

function renderSearch() {
  const items = search.hits.map(hitNode);
  if (!items.length) items.push(el("li", "muted", `Nothing found for “${search.params.q}”.`));
  $("search-results").replaceChildren(...items);
  $("search-more").hidden = !search.hasMore;
  $("search").hidden = false;
}

function hitNode(message) {
  const room = state.rooms.find((r) => r.id === message.chatroomId);
  const sender = message.sender || {};
  const when = el("time", "when", formatTime(message.createTime));
  when.dateTime = message.createTime;
  const meta = el("span", "meta");
  meta.append(
    el("span", "who", sender.nickName || sender.username || `user ${message.senderId}`),
    when,
    el("span", "hit-room", room ? room.name : `room ${message.chatroomId}`),
  );
  if (message.editedAt) meta.append(editedMark(message.editedAt));
  const open = button("", () => openHit(message), "search-hit");
  open.dataset.messageId = message.id;
  open.dataset.roomId = message.chatroomId;
  open.append(meta, el("span", "text", message.content));
  const li = el("li");
  li.append(open);
  return li;
}

// Open the hit's room and show the message in it, loading older pages if it is further back.
async function openHit(message) {
  const room = state.rooms.find((r) => r.id === message.chatroomId);
  if (!room) {
    showError("search-error", "You are no longer a member of that room.");
    return;
  }
  await openRoom(room);
  for (let n = 0; n < SEARCH_PAGES_BACK && state.room === room && !state.messages.has(message.id); n++) {
    if (!state.hasOlder) break;
    await loadOlder();
  }
  const node = state.room === room && state.nodes.get(message.id);
  if (!node) return;
  for (const other of document.querySelectorAll("#message-list .found")) other.classList.remove("found");
  node.classList.add("found");
  node.scrollIntoView({ block: "center" });
}

function clearSearch() {
  ++asked.search;
  Object.assign(search, { params: null, hits: [], hasMore: false });
  $("search-results").replaceChildren();
  $("search").hidden = true;
  showError("search-error", "");
}

async function start() {
  $("tab-login").addEventListener("click", () => setRegistering(false));
  $("tab-register").addEventListener("click", () => setRegistering(true));
  $("auth-form").addEventListener("submit", submitAuth);
  $("send-code").addEventListener("click", sendCode);
  $("logout").addEventListener("click", () => logout());
  $("refresh").addEventListener("click", refreshSide);
  $("back").addEventListener("click", backToRooms);
  window.addEventListener("focus", refreshWhenShown);
  document.addEventListener("visibilitychange", refreshWhenShown);
  $("group-form").addEventListener("submit", createGroup);
  $("member-form").addEventListener("submit", addMember);
  $("leave-group").addEventListener("click", leaveGroup);
  $("friend-form").addEventListener("submit", addFriend);
  $("chat-form").addEventListener("submit", chatWithUsername);
  $("send-form").addEventListener("submit", submitMessage);
  $("attach").addEventListener("click", pickAttachment);
  $("attach-input").addEventListener("change", showAttachment);
  $("attach-send").addEventListener("click", sendAttachment);
  $("attach-cancel").addEventListener("click", clearAttachment);
  $("avatar-pick").addEventListener("click", () => $("avatar-input").click());
  $("avatar-input").addEventListener("change", pickAvatar);
  $("avatar-form").addEventListener("submit", saveAvatar);
  $("avatar-cancel").addEventListener("click", closeAvatarForm);
  $("older").addEventListener("click", loadOlder);
  $("search-form").addEventListener("submit", submitSearch);
  $("search-more").addEventListener("click", searchMore);
  $("search-clear").addEventListener("click", clearSearch);
  receipts.start();
  if (state.token) {
    try {
      enter(await api("GET", "/user/info"));
      return;
    } catch (err) {
      if (err.status === 401) setToken(null);
      else showError("auth-error", `Cannot reach the server: ${err.message}`);
    }
  }
  $("auth").hidden = false;
}

start();
