// llmlab playground: plain JavaScript talking to the same server's OpenAI-compatible API.
// Every request goes to this page's own origin; nothing is loaded from elsewhere. Markdown is rendered by
// the vendored markdown-it (raw HTML off), highlighted by highlight.js and sanitised by DOMPurify.
"use strict";

const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => Array.from(document.querySelectorAll(sel));
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
};

const state = {
  models: [],
  conversation: { id: null, messages: [] },  // messages: {role, content, meta}
  busy: false,
  streaming: null,  // {conv, node} while a chat reply arrives
  editing: null,  // {conv, index} while a user message is being edited for re-sending
};

// ------------------------------------------------------------------ API helpers

function apiHeaders() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem("llmlab-api-key");
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...apiHeaders(), ...(options.headers || {}) } });
  if (res.status === 401) {
    const key = prompt("This server needs an API key:");
    if (key) { localStorage.setItem("llmlab-api-key", key); return api(path, options); }
  }
  if (!res.ok) {
    let message = res.status + " " + res.statusText;
    try { message = (await res.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return res;
}

const postJSON = async (path, body, options = {}) => (await api(path, { method: "POST", body: JSON.stringify(body), ...options })).json();

// Read an OpenAI server-sent-events stream, calling onChunk for each JSON chunk.
async function streamSSE(path, body, onChunk, signal) {
  const res = await api(path, { method: "POST", body: JSON.stringify(body), signal });
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      onChunk(chunk);
    }
  }
}

// ------------------------------------------------------------------ settings

const SLIDERS = ["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty", "max_tokens"];
const DEFAULTS = { temperature: 0.8, top_k: 0, top_p: 1, min_p: 0, repetition_penalty: 1, frequency_penalty: 0,
                   presence_penalty: 0, max_tokens: 96 };

function showSliderValue(name) {
  const v = Number($("#" + name).value);
  let text = Number.isInteger(v) && name !== "temperature" ? String(v) : v.toFixed(2);
  if (name === "top_k" && v === 0) text = "off";
  if ((name === "top_p" && v === 1) || (name === "repetition_penalty" && v === 1) ||
      (["min_p", "frequency_penalty", "presence_penalty"].includes(name) && v === 0)) text += " (off)";
  if (name === "temperature" && v === 0) text = "0 (greedy)";
  $("#" + name + "-val").textContent = text;
}

function sampling() {
  const s = {};
  for (const name of SLIDERS) s[name] = Number($("#" + name).value);
  const seed = $("#seed").value.trim();
  if (seed !== "") s.seed = parseInt(seed, 10);
  if (!s.top_k) delete s.top_k;
  const stop = stopSequences();
  if (stop.length) s.stop = stop;
  return s;
}

// "\n\n, User:" -> ["\n\n", "User:"]: comma-separated, with \n and \t written as escapes; at most 4 (OpenAI's limit).
function stopSequences() {
  return $("#stop").value.split(",").map((x) => x.trim().replace(/\\n/g, "\n").replace(/\\t/g, "\t")).filter((x) => x).slice(0, 4);
}

function saveSettings() {
  const saved = { system: $("#system-prompt").value, seed: $("#seed").value, model: $("#model-select").value,
                  probs: $("#show-probs").checked, stop: $("#stop").value };
  for (const name of SLIDERS) saved[name] = $("#" + name).value;
  localStorage.setItem("llmlab-settings", JSON.stringify(saved));
}

function loadSettings() {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem("llmlab-settings") || "{}"); } catch (e) { saved = {}; }
  for (const name of SLIDERS) if (saved[name] !== undefined) $("#" + name).value = saved[name];
  if (saved.system) $("#system-prompt").value = saved.system;
  if (saved.seed) $("#seed").value = saved.seed;
  if (saved.stop) $("#stop").value = saved.stop;
  if (saved.probs !== undefined) $("#show-probs").checked = saved.probs;
  return saved;
}

function currentModel() { return $("#model-select").value; }
// "MODEL+rag:INDEX" answers chats from a retrieval index; the other views use MODEL itself.
const baseModel = (id) => id.split("+rag:")[0];

// ------------------------------------------------------------------ token colouring and tooltip

const probColor = (p) => `hsl(${Math.round(130 * Math.sqrt(p))} 75% 82%)`;
const fmtP = (p) => (p >= 0.995 ? "100" : (100 * p).toFixed(p < 0.01 ? 2 : 1)) + "%";
const visible = (t) => t.replace(/\n/g, "↵").replace(/ /g, "␣").replace(/\t/g, "⇥") || "∅";

// One generated token with its probability and alternatives, from an OpenAI logprobs entry.
function tokenInfo(entry) {
  return { text: entry.token, p: Math.exp(entry.logprob),
           top: (entry.top_logprobs || []).map((t) => [t.token, Math.exp(t.logprob)]) };
}

function tokenSpan(text, info) {
  const span = el("span", { class: "tok" }, text);
  if (info) {
    span._info = info;
    if ($("#show-probs").checked) span.style.background = probColor(info.p);
  }
  return span;
}

function showTooltip(ev, info) {
  const tt = $("#tooltip");
  tt.innerHTML = "";
  tt.append(el("div", { class: "tt-head" }, `“${visible(info.text)}”  ${info.label || "p"} = ${fmtP(info.p)}`));
  if (info.top.length) {
    const table = el("table");
    for (const [t, p] of info.top) {
      const row = el("tr", { class: t === info.text ? "chosen" : "" },
        el("td", {}, visible(t)), el("td", {}, fmtP(p)),
        el("td", { style: "width:70px" }, el("div", { class: "bar", style: `width:${Math.max(2, 70 * p)}px` })));
      table.append(row);
    }
    tt.append(el("div", { class: "muted" }, "the model's top alternatives:"), table);
  }
  tt.classList.remove("hidden");
  const x = Math.min(ev.clientX + 14, window.innerWidth - tt.offsetWidth - 8);
  const y = Math.min(ev.clientY + 16, window.innerHeight - tt.offsetHeight - 8);
  tt.style.left = x + "px";
  tt.style.top = y + "px";
}

document.addEventListener("mouseover", (ev) => {
  const t = ev.target.closest && ev.target.closest(".tok");
  if (t && t._info) showTooltip(ev, t._info); else $("#tooltip").classList.add("hidden");
});

function recolour() {
  for (const span of $$(".tok")) if (span._info) span.style.background = $("#show-probs").checked ? probColor(span._info.p) : "";
  $("#messages").classList.toggle("show-tokens", $("#show-probs").checked);
}

// ------------------------------------------------------------------ Markdown

const markdown = window.markdownit({
  html: false,  // raw HTML in an answer is shown as text, never run
  breaks: true,
  highlight: (code, lang) => {
    if (lang && window.hljs.getLanguage(lang)) {
      try { return window.hljs.highlight(code, { language: lang, ignoreIllegals: true }).value; } catch (e) { /* plain */ }
    }
    return "";  // markdown-it escapes it
  },
});

// Render `text` as Markdown into `target`, sanitised (DOMPurify) even though raw HTML is already off:
// a link or attribute markdown-it lets through must not run script either.
function renderMarkdown(target, text) {
  target.innerHTML = DOMPurify.sanitize(markdown.render(text));
  for (const a of target.querySelectorAll("a")) { a.target = "_blank"; a.rel = "noopener noreferrer"; }
  for (const code of target.querySelectorAll("pre > code")) {
    code.classList.add("hljs");
    const button = el("button", { type: "button", class: "copy-code", title: "Copy this code" }, "Copy");
    button.addEventListener("click", () => copyText(code.textContent, button));
    code.parentElement.append(button);
  }
}

// ------------------------------------------------------------------ sources of grounded answers

const httpUrl = (u) => (/^https?:\/\//i.test(u || "") ? u : null);  // never a javascript: or data: link

// The passages a grounded answer was given, by the numbers it cites them with; the cited ones marked.
function sourcesBlock(sources, cited) {
  const citedSet = new Set(cited || []);
  const summary = sources.length
    ? `Sources: ${sources.length} passage${sources.length > 1 ? "s" : ""}, ${citedSet.size} cited`
    : "Sources: no passage fitted in the context window";
  const list = el("ol", { class: "sources-list" });
  for (const s of sources) {
    const href = httpUrl(s.url);
    const title = href ? el("a", { href, target: "_blank", rel: "noopener noreferrer" }, s.title || s.url) : el("span", {}, s.title || s.url);
    const ranks = [s.bm25_rank && `BM25 #${s.bm25_rank}`, s.dense_rank && `embedding #${s.dense_rank}`].filter(Boolean);
    const facts = [`score ${Number(s.score).toFixed(4)}`, ...ranks, ...(citedSet.has(s.n) ? ["cited"] : [])].join(" · ");
    list.append(el("li", { value: String(s.n), class: citedSet.has(s.n) ? "cited" : "", "data-n": String(s.n) },
      title, " ", el("span", { class: "muted" }, facts),
      el("details", {}, el("summary", {}, "passage"), el("div", { class: "passage" }, s.text))));
  }
  return el("details", { class: "sources", open: "" }, el("summary", {}, summary), list);
}

// Turn the [n] citations in rendered Markdown (outside code) into links to source n.
function linkCitations(md, sources) {
  const byN = new Map(sources.map((s) => [String(s.n), s]));
  const walker = document.createTreeWalker(md, NodeFilter.SHOW_TEXT);
  const nodes = [];
  while (walker.nextNode()) if (!walker.currentNode.parentElement.closest("code, a")) nodes.push(walker.currentNode);
  for (const node of nodes) {
    const parts = node.textContent.split(/(\[\d+\])/);
    if (parts.length === 1) continue;
    node.replaceWith(...parts.map((part) => {
      const s = byN.get((part.match(/^\[(\d+)\]$/) || [])[1]);
      if (!s) return part;
      const href = httpUrl(s.url);
      return el("a", { class: "cite", title: s.title || s.url, ...(href ? { href, target: "_blank", rel: "noopener noreferrer" } : {}) }, part);
    }));
  }
}

function showSources(node, md, sources, cited) {
  if (!sources) return;
  linkCitations(md, sources);
  node.querySelector(".body").append(sourcesBlock(sources, cited));
}

// Copy to the clipboard (navigator.clipboard needs a secure context: 127.0.0.1 is one, a LAN address is not).
async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) {
    const area = el("textarea", { style: "position:fixed;opacity:0" });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  const label = button.textContent;
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = label; }, 1200);
}

function statsText(t, tokens, finish) {
  if (!t && !finish) return "";
  t = t || {};
  const parts = [];
  if (t.ttft_ms != null) parts.push(`first token ${Math.round(t.ttft_ms)} ms`);
  if (t.tokens_per_second != null) parts.push(`${t.tokens_per_second.toFixed(1)} tok/s`);
  if (tokens != null) parts.push(`${tokens} tokens`);
  if (t.queue_ms > 50) parts.push(`queued ${Math.round(t.queue_ms)} ms`);
  if (finish) parts.push({ length: "stopped: max tokens", stopped: "stopped by you" }[finish] || "stopped: end of answer");
  return parts.join(" · ");
}

// Stream one chat or text completion into `body`, colouring tokens; returns {text, tokens, timings, finish}
// (finish "stopped" when `signal` aborted it: the text so far is kept).
async function streamInto(body, path, request, signal, onText) {
  const result = { text: "", tokens: [], timings: null, finish: null, sources: null, cited: [] };
  body.classList.add("streaming");
  try {
    await streamSSE(path, { ...request, stream: true, logprobs: path.endsWith("chat/completions") ? true : 5,
                            ...(path.endsWith("chat/completions") ? { top_logprobs: 5 } : {}) }, (chunk) => {
      if (chunk.llmlab_sources) result.sources = chunk.llmlab_sources;  // the passages a grounded answer was given
      for (const choice of chunk.choices || []) {
        if (choice.llmlab_cited) result.cited = choice.llmlab_cited;
        const text = choice.delta ? (choice.delta.content || "") : (choice.text || "");
        let info = null;
        if (choice.logprobs && choice.logprobs.content) info = tokenInfo(choice.logprobs.content[0]);
        else if (choice.logprobs && choice.logprobs.tokens) {
          const lp = choice.logprobs;
          info = { text: lp.tokens[0], p: Math.exp(lp.token_logprobs[0]),
                   top: Object.entries(lp.top_logprobs[0] || {}).map(([t, l]) => [t, Math.exp(l)]) };
        }
        if (text || info) {
          result.text += text;
          if (info) result.tokens.push({ ...info, shown: text });
          if (text) body.append(tokenSpan(text, info));
        }
        if (text && onText) onText(result.text);
        if (choice.finish_reason) { result.finish = choice.finish_reason; result.timings = choice.timings || null; }
      }
    }, signal);
  } catch (e) {
    if (e.name !== "AbortError") throw e;
    result.finish = "stopped";  // Stop keeps what arrived so far
  } finally {
    body.classList.remove("streaming");
  }
  return result;
}

// ------------------------------------------------------------------ chat

const OPEN_KEY = "llmlab-open-conversation";  // reopened after a reload
const plain = (messages) => messages.map((m) => ({ role: m.role, content: m.content }));

// A message's node; an answer's body holds its tokens (coloured, with tooltips) and its rendered Markdown.
// The checked built-in tools; with any, the server runs them (llmlab_tools) and the answer comes whole.
const chosenTools = () => $$(".tools-control input:checked").map((box) => box.value);

async function askWithTools(tools, request, signal) {
  const r = await postJSON("/v1/chat/completions", { ...request, llmlab_tools: tools }, { signal });
  const c = r.choices[0];
  return { text: c.message.content || "", tokens: [], timings: c.timings, finish: c.finish_reason, trace: c.llmlab_tool_trace };
}

// Each tool call the model made, collapsed to one line; open it for the arguments and the whole result.
function toolTrace(trace) {
  return (trace || []).map((s) => el("details", { class: "tool-call" + (s.ok ? "" : " failed") },
    el("summary", {}, `${s.name}(${s.arguments}) → ${s.result.split("\n")[0].slice(0, 80)}`),
    el("pre", {}, `arguments: ${s.arguments}\n\n${s.result}\n\n(${Math.round(s.seconds * 1000)} ms)`)));
}

function renderMessage(msg, index) {
  const body = el("div", { class: "body" });
  if (msg.role === "assistant") {
    const tokens = el("div", { class: "tokens" }), md = el("div", { class: "md" });
    body.append(...toolTrace(msg.meta && msg.meta.tool_trace));
    if (msg.meta && msg.meta.tokens) for (const t of msg.meta.tokens) tokens.append(tokenSpan(t.shown, t));
    else tokens.append(msg.content);
    renderMarkdown(md, msg.content);
    body.append(tokens, md);
  } else {
    body.append(msg.content);
  }
  const node = el("div", { class: "msg " + msg.role }, el("div", { class: "role" }, msg.role === "user" ? "you" : (msg.meta && msg.meta.model) || msg.role), body);
  if (msg.meta && msg.meta.sources) showSources(node, body.querySelector(".md"), msg.meta.sources, msg.meta.cited);
  if (msg.meta && (msg.meta.timings || msg.meta.finish)) node.append(el("div", { class: "stats" }, statsText(msg.meta.timings, msg.meta.tokens ? msg.meta.tokens.length : null, msg.meta.finish)));
  if (index !== undefined) addActions(node, msg, index);
  $("#messages").append(node);
  return node;
}

// Copy under every message; Edit under a question; Regenerate under the last answer.
function addActions(node, msg, index) {
  node.dataset.index = String(index);
  const bar = el("div", { class: "actions" });
  const copy = el("button", { type: "button", class: "copy", title: "Copy this message" }, "Copy");
  copy.addEventListener("click", () => copyText(msg.content, copy));
  bar.append(copy);
  if (msg.role === "user") {
    bar.append(el("button", { type: "button", class: "edit", title: "Edit and send again (replaces this message and what follows)",
                              onclick: () => editMessage(index) }, "Edit"));
  } else if (index === state.conversation.messages.length - 1) {
    bar.append(el("button", { type: "button", class: "regenerate", title: "Ask again for a new answer",
                              onclick: () => regenerate(index) }, "Regenerate"));
  }
  node.append(bar);
}

function editMessage(index) {
  if (state.busy) return;
  state.editing = { conv: state.conversation, index };
  $("#chat-input").value = state.conversation.messages[index].content;
  $("#edit-note").classList.remove("hidden");
  $("#chat-input").focus();
}

function cancelEdit() {
  state.editing = null;
  $("#edit-note").classList.add("hidden");
}

// Drop the last answer and ask its question again (with the current settings).
function regenerate(index) {
  const conv = state.conversation;
  if (state.busy || index !== conv.messages.length - 1 || index < 1) return;
  const question = conv.messages[index - 1].content;
  conv.messages.splice(index - 1);
  renderConversation();
  sendChat(null, question);
}

// Grey out the oldest messages that the last request left out to fit the context window, with a note saying so.
function markDropped(dropped, context) {
  for (const n of $$("#messages .context-note")) n.remove();
  for (const n of $$("#messages .msg.dropped")) n.classList.remove("dropped");
  if (!dropped) return;
  const nodes = $$("#messages .msg[data-index]");
  for (const n of nodes) if (Number(n.dataset.index) < dropped) n.classList.add("dropped");
  const first = nodes.find((n) => Number(n.dataset.index) >= dropped);
  const note = el("div", { class: "context-note" },
    `${dropped} earlier message${dropped === 1 ? "" : "s"} no longer fit${dropped === 1 ? "s" : ""} the model's ${context}-token context and ${dropped === 1 ? "was" : "were"} not sent`);
  if (first) first.before(note); else $("#messages").append(note);
}

function renderConversation() {
  const conv = state.conversation;
  $("#messages").innerHTML = "";
  if (!conv.messages.length) $("#messages").append(emptyHint);
  conv.messages.forEach((m, i) => { if (m.role !== "system") renderMessage(m, i); });
  const fitted = [...conv.messages].reverse().find((m) => m.meta && m.meta.dropped !== undefined);
  if (fitted) markDropped(fitted.meta.dropped, fitted.meta.context_length);
  if (state.streaming && state.streaming.conv === conv) $("#messages").append(state.streaming.node);  // the reply still arriving
  $("#messages").scrollTop = $("#messages").scrollHeight;
}

let chatAbort = null;
const emptyHint = $("#chat-empty");
const isOpen = (conv) => state.conversation === conv;

// A reply belongs to the conversation it was asked in: switching chats or starting a new one while it
// streams leaves it to finish, and be saved, there. Before sending, the oldest turns that no longer fit
// the model's context (by its tokenizer's count, /api/fit_chat) are left out, and the page says so.
async function sendChat(ev, question) {
  ev && ev.preventDefault();
  const text = question || $("#chat-input").value.trim();
  if (!text || state.busy) return;
  if (!question) $("#chat-input").value = "";
  emptyHint.remove();
  const conv = state.conversation;
  if (state.editing && state.editing.conv === conv) {  // an edited question replaces itself and what followed it
    conv.messages.splice(state.editing.index);
    renderConversation();
  }
  cancelEdit();
  const model = currentModel(), settings = sampling(), system = $("#system-prompt").value.trim();
  const user = { role: "user", content: text };
  conv.messages.push(user);
  const userNode = renderMessage(user, conv.messages.length - 1);
  const node = renderMessage({ role: "assistant", content: "", meta: { model } });
  const tokens = node.querySelector(".tokens"), md = node.querySelector(".md");
  let pending = null;  // re-render the Markdown at most once a frame while tokens arrive
  const onText = (t) => { if (!pending) pending = requestAnimationFrame(() => { pending = null; renderMarkdown(md, t); }); };
  state.streaming = { conv, node };
  setBusy(true);
  chatAbort = new AbortController();
  let answered = false;
  try {
    const sys = system ? [{ role: "system", content: system }] : [];
    const fit = await postJSON("/api/fit_chat", { model, messages: [...sys, ...plain(conv.messages)], max_tokens: settings.max_tokens },
                               { signal: chatAbort.signal });
    if (!fit.fits) {
      throw new Error(`this message alone is ${fit.prompt_tokens} tokens with the chat template; the model's ` +
                      `${fit.context_length}-token context window leaves room for ${fit.budget} beside the answer`);
    }
    if (isOpen(conv)) markDropped(fit.dropped, fit.context_length);
    const messages = [...sys, ...plain(conv.messages.slice(fit.dropped))];
    const tools = chosenTools();
    const r = tools.length ? await askWithTools(tools, { model, messages, ...settings }, chatAbort.signal)
      : await streamInto(tokens, "/v1/chat/completions", { model, messages, ...settings }, chatAbort.signal, onText);
    if (pending) cancelAnimationFrame(pending);
    renderMarkdown(md, r.text);
    showSources(node, md, r.sources, r.cited);
    if (r.trace && r.trace.length) tokens.before(...toolTrace(r.trace));
    const meta = { model, timings: r.timings, finish: r.finish, tokens: r.tokens, settings, dropped: fit.dropped,
                   context_length: fit.context_length, sources: r.sources, cited: r.cited, ...(r.trace ? { tool_trace: r.trace } : {}) };
    node.append(el("div", { class: "stats" }, statsText(r.timings, r.tokens.length, r.finish)));
    const reply = { role: "assistant", content: r.text, meta };
    conv.messages.push(reply);
    answered = true;
    if (isOpen(conv)) {
      for (const button of $$("#messages .regenerate")) button.remove();  // only the last answer can be regenerated
      addActions(node, reply, conv.messages.length - 1);
    }
    await saveConversation(conv, system, model, settings);
  } catch (e) {
    if (!answered) {  // a failed turn leaves the conversation as it was; its text goes back to the input box
      conv.messages.splice(conv.messages.indexOf(user), 1);
      userNode.classList.add("failed");
      delete userNode.dataset.index;
      userNode.querySelector(".actions").remove();
      if (isOpen(conv) && !userNode.isConnected) {  // reopened mid-request: show the struck-out turn again
        renderConversation();
        $("#messages").append(userNode, node);
      }
      if (isOpen(conv) && !$("#chat-input").value) $("#chat-input").value = text;
    }
    node.append(el("div", { class: "error" }, e.name === "AbortError" ? "stopped before the answer began" : e.message));
  } finally {
    state.streaming = null;
    setBusy(false);
    chatAbort = null;
  }
  if (isOpen(conv)) $("#messages").scrollTop = $("#messages").scrollHeight;
}

function setBusy(busy) {
  state.busy = busy;
  $("#chat-send").disabled = busy;
  $("#chat-stop").classList.toggle("hidden", !busy);
}

// ------------------------------------------------------------------ history

async function saveConversation(conv, system, model, settings) {
  const body = { mode: "chat", model, settings: { ...settings, system }, messages: conv.messages };
  const saved = conv.id
    ? await (await api("/api/conversations/" + conv.id, { method: "PUT", body: JSON.stringify(body) })).json()
    : await postJSON("/api/conversations", body);
  conv.id = saved.id;
  if (!isOpen(conv) && state.conversation.id === conv.id) {  // reopened while its reply streamed: show the reply
    state.conversation = conv;
    renderConversation();
  }
  if (isOpen(conv)) localStorage.setItem(OPEN_KEY, conv.id);
  await loadHistory();
}

async function loadHistory() {
  const list = (await (await api("/api/conversations")).json()).data;
  const ul = $("#history-list");
  ul.innerHTML = "";
  if (!list.length) ul.append(el("li", { class: "empty" }, "No saved chats yet"));
  for (const c of list) {
    const li = el("li", { class: c.id === state.conversation.id ? "active" : "", "data-id": c.id, title: c.title },
      el("span", { class: "title" }, c.title),
      el("button", { title: "Rename", class: "rename", onclick: (e) => { e.stopPropagation(); renameConversation(c); } }, "✎"),
      el("button", { title: "Export JSON", class: "export", onclick: (e) => { e.stopPropagation(); exportConversation(c.id); } }, "⤓"),
      el("button", { title: "Delete", class: "delete", onclick: (e) => { e.stopPropagation(); deleteConversation(c); } }, "✕"));
    li.addEventListener("click", () => openConversation(c.id));
    ul.append(li);
  }
  return list;
}

async function openConversation(id) {
  cancelEdit();
  if (state.streaming && state.streaming.conv.id === id) {
    state.conversation = state.streaming.conv;  // the one still receiving its reply, not its saved copy
  } else {
    const conv = await (await api("/api/conversations/" + id)).json();
    state.conversation = { id: conv.id, messages: conv.messages };
    if (conv.settings && conv.settings.system !== undefined) $("#system-prompt").value = conv.settings.system;
    if (conv.model && state.models.some((m) => m.id === conv.model)) $("#model-select").value = conv.model;
  }
  localStorage.setItem(OPEN_KEY, id);
  switchTab("chat");
  renderConversation();
  await loadHistory();
}

async function renameConversation(c) {
  const title = prompt("New name for this conversation:", c.title);
  if (!title) return;
  await api("/api/conversations/" + c.id, { method: "PATCH", body: JSON.stringify({ title }) });
  await loadHistory();
}

async function deleteConversation(c) {
  if (!confirm(`Delete “${c.title}”?`)) return;
  await api("/api/conversations/" + c.id, { method: "DELETE" });
  if (state.conversation.id === c.id) newChat();
  await loadHistory();
}

// Fetch a JSON export (with the API key, if any) and hand it to the browser as a download.
async function download(path, filename) {
  const data = await (await api(path)).blob();
  const a = el("a", { href: URL.createObjectURL(data), download: filename });
  document.body.append(a);
  a.click();
  a.remove();
}

const exportConversation = (id) => download("/api/conversations/" + id + "/export", `conversation-${id.slice(0, 8)}.json`);

function newChat() {
  cancelEdit();
  state.conversation = { id: null, messages: [] };
  localStorage.removeItem(OPEN_KEY);
  renderConversation();
  loadHistory();
}

// ------------------------------------------------------------------ completion

let completeAbort = null;
async function runCompletion() {
  const prompt = $("#complete-input").value;
  if (!prompt) return;
  const out = $("#complete-output");
  out.querySelector(".prompt-echo").textContent = prompt;
  const gen = out.querySelector(".gen");
  gen.innerHTML = "";
  $("#complete-stats").textContent = "";
  $("#complete-run").disabled = true;
  $("#complete-stop").classList.remove("hidden");
  completeAbort = new AbortController();
  try {
    const r = await streamInto(gen, "/v1/completions", { model: baseModel(currentModel()), prompt, ...sampling() }, completeAbort.signal);
    $("#complete-stats").textContent = statsText(r.timings, r.tokens.length, r.finish);
  } catch (e) {
    $("#complete-stats").textContent = e.name === "AbortError" ? "stopped" : "error: " + e.message;
  } finally {
    $("#complete-run").disabled = false;
    $("#complete-stop").classList.add("hidden");
  }
}

// ------------------------------------------------------------------ compare

function renderCompareChips() {
  const box = $("#compare-models");
  box.innerHTML = "";
  state.models.forEach((m, i) => {
    const input = el("input", { type: "checkbox", value: m.id });
    input.checked = i < 4;
    const chip = el("label", { class: "chip" + (input.checked ? " on" : "") }, input, m.id);
    input.addEventListener("change", () => chip.classList.toggle("on", input.checked));
    box.append(chip);
  });
}

async function runCompare() {
  const prompt = $("#compare-input").value.trim();
  if (!prompt) return;
  const byTemps = $("input[name=compare-mode]:checked").value === "temps";
  const base = sampling();
  if (base.seed === undefined) base.seed = Math.floor(Math.random() * 1e6);
  let columns;
  if (byTemps) {
    const temps = $("#compare-temp-list").value.split(",").map((x) => Number(x.trim())).filter((x) => !Number.isNaN(x));
    columns = temps.slice(0, 4).map((t) => ({ model: currentModel(), temperature: t, label: `${currentModel()} · T=${t}` }));
  } else {
    columns = $$("#compare-models input:checked").slice(0, 4).map((i) => ({ model: i.value, temperature: base.temperature, label: i.value }));
  }
  if (columns.length < 1) { $("#compare-note").textContent = "choose at least one model"; return; }
  $("#compare-note").textContent = `shared seed ${base.seed}`;
  const grid = $("#compare-grid");
  grid.innerHTML = "";
  const chat = $("#compare-chat").checked;
  const system = $("#system-prompt").value.trim();
  await Promise.all(columns.map(async (col) => {
    const body = el("div", { class: "body" });
    const stats = el("div", { class: "stats" }, "waiting…");
    grid.append(el("div", { class: "compare-col" }, el("h3", {}, el("span", {}, col.label), el("span", { class: "muted" }, "")), body, stats));
    const request = { ...base, model: col.model, temperature: col.temperature };
    try {
      const r = chat
        ? await streamInto(body, "/v1/chat/completions", { ...request, messages: [...(system ? [{ role: "system", content: system }] : []), { role: "user", content: prompt }] })
        : await streamInto(body, "/v1/completions", { ...request, model: baseModel(col.model), prompt });
      stats.textContent = statsText(r.timings, r.tokens.length, r.finish);
      if (r.sources) body.append(sourcesBlock(r.sources, r.cited));
    } catch (e) {
      stats.textContent = "";
      body.append(el("div", { class: "error" }, e.message));
    }
  }));
}

// ------------------------------------------------------------------ next token

let ntTimer = null;
async function runNextToken() {
  const text = $("#nt-input").value;
  if (!text) return;
  const s = sampling();
  const request = { model: currentModel(), temperature: Number($("#nt-temp").value), top_k: s.top_k || null,
                    top_p: s.top_p, min_p: s.min_p, repetition_penalty: s.repetition_penalty, k: 20 };
  if ($("#nt-chat").checked) request.messages = [{ role: "user", content: text }]; else request.prompt = text;
  const chart = $("#nt-chart");
  try {
    const d = await postJSON("/api/next_token", request);
    $("#nt-summary").innerHTML = "";
    $("#nt-summary").append(
      el("span", {}, "prompt tokens ", el("b", {}, String(d.prompt_tokens))),
      el("span", { title: "How uncertain the model is, in bits; 2^entropy = effective number of choices" }, "entropy ", el("b", {}, d.entropy_bits.toFixed(2) + " bits"), ` (≈${d.effective_choices} choices)`),
      el("span", {}, "after sampling settings ", el("b", {}, d.sampled_entropy_bits.toFixed(2) + " bits"), ` (${d.candidates} of ${d.vocab_size} tokens can be drawn)`));
    chart.innerHTML = "";
    chart.append(el("div", { class: "chart-legend" }, el("span", {}, el("i", { style: "background:#d9dce6" }), "model probability"),
      el("span", {}, el("i", { style: "background:var(--accent)" }), "after temperature / top-k / top-p / min-p")));
    const max = Math.max(...d.tokens.map((t) => Math.max(t.prob, t.sampled_prob)), 1e-9);
    for (const t of d.tokens) {
      const row = el("div", { class: "bar-row" + (t.sampled_prob === 0 ? " cut" : ""), title: `id ${t.id} · logit ${t.logit}` },
        el("span", { class: "label" }, visible(t.text)),
        el("div", { class: "bars" }, el("div", { class: "raw", style: `width:${(100 * t.prob) / max}%` }),
                                     el("div", { class: "shaped", style: `width:${(100 * t.sampled_prob) / max}%` })),
        el("span", { class: "nums" }, `${fmtP(t.prob)} → ${fmtP(t.sampled_prob)}`));
      row.addEventListener("click", () => { $("#nt-input").value += t.text; runNextToken(); });
      chart.append(row);
    }
  } catch (e) {
    chart.innerHTML = "";
    chart.append(el("div", { class: "error" }, e.message));
  }
}

// ------------------------------------------------------------------ tokenizer view

const PALETTE = ["#fde2e4", "#dbeafe", "#dcfce7", "#fef3c7", "#ede9fe", "#cffafe", "#fce7f3", "#e0e7ff", "#ffedd5", "#d1fae5"];
let tokTimer = null;
async function runTokenizer() {
  const text = $("#tok-input").value;
  const view = $("#tok-view");
  try {
    const d = await postJSON("/tokenize", { model: $("#tok-model").value, prompt: text });
    view.innerHTML = "";
    d.tokens.forEach((id, i) => {
      // A token that is only part of a UTF-8 character (emoji, accents) is shown as its bytes.
      const str = d.token_strs[i].includes("\ufffd") ? d.token_bytes[i].map((b) => "\\x" + b.toString(16).padStart(2, "0")).join("") : visible(d.token_strs[i]);
      const chip = el("span", { class: "tok-chip", style: `background:${PALETTE[i % PALETTE.length]}`, title: `token ${i}: id ${id}` }, str);
      if ($("#tok-ids").checked) chip.append(el("small", {}, String(id)));
      view.append(chip);
    });
    const chars = [...text].length;
    $("#tok-counts").innerHTML = "";
    $("#tok-counts").append(el("div", {}, el("b", {}, String(d.count)), "tokens"), el("div", {}, el("b", {}, String(chars)), "characters"),
      el("div", {}, el("b", {}, d.count ? (chars / d.count).toFixed(2) : "–"), "characters / token"),
      d.max_model_len == null  // a reference tokenizer belongs to no model here
        ? el("div", { title: "a reference tokenizer has no model, so no context window" }, el("b", {}, "–"), "no model context")
        : el("div", {}, el("b", {}, String(d.max_model_len)), "context window"));
    $("#tok-idlist").textContent = JSON.stringify(d.tokens);
  } catch (e) {
    view.innerHTML = "";
    view.append(el("div", { class: "error" }, e.message));
  }
}

// ------------------------------------------------------------------ attention

let attData = null;
async function runAttention() {
  const layer = Number($("#att-layer").value);
  $("#att-note").textContent = "computing…";
  try {
    attData = await postJSON("/api/attention", { model: currentModel(), prompt: $("#att-input").value, layer });
    const layers = $("#att-layer");
    if (layers.options.length !== attData.n_layers) {
      layers.innerHTML = "";
      for (let i = 0; i < attData.n_layers; i++) layers.append(el("option", { value: String(i) }, String(i)));
      layers.value = String(layer);
    }
    const heads = $("#att-head");
    if (heads.options.length !== attData.n_heads + 1) {
      heads.innerHTML = "";
      heads.append(el("option", { value: "mean" }, "mean of heads"));
      for (let h = 0; h < attData.n_heads; h++) heads.append(el("option", { value: String(h) }, String(h)));
    }
    $("#att-note").textContent = `${attData.tokens.length} tokens · ${attData.n_layers} layers × ${attData.n_heads} heads`;
    drawAttention();
  } catch (e) {
    $("#att-note").textContent = "error: " + e.message;
  }
}

function attMatrix() {
  const h = $("#att-head").value;
  if (h !== "mean") return attData.weights[Number(h)];
  const H = attData.weights.length;
  return attData.weights[0].map((row, i) => row.map((_, j) => attData.weights.reduce((s, w) => s + w[i][j], 0) / H));
}

function drawAttention() {
  if (!attData) return;
  const m = attMatrix();
  const labels = attData.tokens.map((t) => visible(t.text).slice(0, 10));
  const T = labels.length;
  const cell = Math.max(12, Math.min(34, Math.floor(560 / T)));
  const margin = 90;
  const canvas = $("#att-canvas");
  canvas.width = margin + T * cell + 10;
  canvas.height = margin + T * cell + 10;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.font = "11px ui-monospace, monospace";
  for (let i = 0; i < T; i++) {
    for (let j = 0; j < T; j++) {
      const w = m[i][j];
      ctx.fillStyle = j > i ? "#f3f4f6" : `rgba(79, 70, 229, ${Math.pow(w, 0.6)})`;
      ctx.fillRect(margin + j * cell, margin + i * cell, cell - 1, cell - 1);
    }
    ctx.fillStyle = "#1f2330";
    ctx.textAlign = "right";
    ctx.fillText(labels[i], margin - 6, margin + i * cell + cell / 2 + 4);
    ctx.save();
    ctx.translate(margin + i * cell + cell / 2 + 4, margin - 6);
    ctx.rotate(-Math.PI / 3);
    ctx.textAlign = "left";
    ctx.fillText(labels[i], 0, 0);
    ctx.restore();
  }
  canvas._geom = { margin, cell, T, m };
}

$("#att-canvas").addEventListener("mousemove", (ev) => {
  const g = ev.target._geom;
  if (!g) return;
  const r = ev.target.getBoundingClientRect();
  const j = Math.floor((ev.clientX - r.left - g.margin) / g.cell);
  const i = Math.floor((ev.clientY - r.top - g.margin) / g.cell);
  if (i < 0 || j < 0 || i >= g.T || j >= g.T || j > i) { $("#tooltip").classList.add("hidden"); return; }
  const q = attData.tokens[i].text, k = attData.tokens[j].text;
  showTooltip(ev, { text: `${visible(q)} → ${visible(k)}`, p: g.m[i][j], top: [], label: "attention weight" });
});
$("#att-canvas").addEventListener("mouseleave", () => $("#tooltip").classList.add("hidden"));

// ------------------------------------------------------------------ models, status, tabs

async function loadModels(saved) {
  state.models = (await (await api("/v1/models")).json()).data;
  $("#model-select").innerHTML = "";
  for (const m of state.models) $("#model-select").append(el("option", { value: m.id }, m.id));
  if (saved.model && state.models.some((m) => m.id === saved.model)) $("#model-select").value = saved.model;
  const tokenizers = (await (await api("/api/tokenizers")).json()).data;
  $("#tok-model").innerHTML = "";
  for (const t of tokenizers) $("#tok-model").append(el("option", { value: t.id }, t.kind === "model" ? t.id : `${t.id} (reference)`));
  $("#tok-model").value = baseModel(currentModel());
  renderCompareChips();
  showModelInfo();
}

function showModelInfo() {
  const m = state.models.find((x) => x.id === currentModel());
  if (!m) return;
  const bits = [m.kind === "imported" ? "imported" : "llmlab checkpoint"];
  if (m.rag_index) bits.push(`answers from index “${m.rag_index}” (${m.rag_chunks} passages), with citations`);
  if (m.context_length) bits.push(`context ${m.context_length}`);
  if (m.parameters) bits.push(`${(m.parameters / 1e6).toFixed(m.parameters < 1e7 ? 2 : 0)}M params`);
  if (!m.loaded) bits.push("loads on first use");
  $("#model-info").textContent = bits.join(" · ");
}

async function refreshStatus() {
  try {
    const s = await (await api("/api/status")).json();
    const w = s.worker;
    $("#server-status").innerHTML = "";
    $("#server-status").append(el("span", { class: "dot" }), `${w.running} running · ${w.queued} waiting · ${s.models.length} models`);
    state.models = s.models.map((m) => ({ ...m }));
    showModelInfo();
  } catch (e) {
    $("#server-status").textContent = "server unreachable";
  }
}

function switchTab(name) {
  for (const t of $$(".tab")) t.classList.toggle("active", t.dataset.tab === name);
  for (const p of $$(".panel")) p.classList.toggle("active", p.id === "panel-" + name);
  $("#history-panel").classList.toggle("hidden", name !== "chat");
  $(".layout").style.gridTemplateColumns = name === "chat" ? "" : "minmax(0, 1fr) 270px";
  if (name === "tokenizer") runTokenizer();
}

function init() {
  const saved = loadSettings();
  $("#messages").classList.toggle("show-tokens", $("#show-probs").checked);
  for (const name of SLIDERS) {
    showSliderValue(name);
    $("#" + name).addEventListener("input", () => { showSliderValue(name); saveSettings(); });
  }
  for (const id of ["#system-prompt", "#seed", "#model-select"]) $(id).addEventListener("change", saveSettings);
  $("#model-select").addEventListener("change", () => { showModelInfo(); attData = null; });
  $("#show-probs").addEventListener("change", () => { recolour(); saveSettings(); });
  $("#reset-settings").addEventListener("click", () => {
    for (const [k, v] of Object.entries(DEFAULTS)) { $("#" + k).value = v; showSliderValue(k); }
    $("#seed").value = "";
    saveSettings();
  });
  for (const t of $$(".tab")) t.addEventListener("click", () => switchTab(t.dataset.tab));
  $("#chat-form").addEventListener("submit", sendChat);
  $("#chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) sendChat(e); });
  $("#chat-stop").addEventListener("click", () => chatAbort && chatAbort.abort());
  $("#new-chat").addEventListener("click", newChat);
  $("#edit-cancel").addEventListener("click", () => { cancelEdit(); $("#chat-input").value = ""; });
  $("#stop").addEventListener("change", saveSettings);
  $("#complete-run").addEventListener("click", runCompletion);
  $("#complete-stop").addEventListener("click", () => completeAbort && completeAbort.abort());
  $("#compare-run").addEventListener("click", runCompare);
  for (const r of $$("input[name=compare-mode]")) r.addEventListener("change", () => {
    const temps = $("input[name=compare-mode]:checked").value === "temps";
    $("#compare-models").classList.toggle("hidden", temps);
    $("#compare-temps").classList.toggle("hidden", !temps);
  });
  $("#nt-run").addEventListener("click", runNextToken);
  $("#nt-temp").addEventListener("input", () => {
    $("#nt-temp-val").textContent = Number($("#nt-temp").value).toFixed(2);
    clearTimeout(ntTimer);
    ntTimer = setTimeout(runNextToken, 150);
  });
  $("#tok-input").addEventListener("input", () => { clearTimeout(tokTimer); tokTimer = setTimeout(runTokenizer, 150); });
  $("#tok-model").addEventListener("change", runTokenizer);
  $("#tok-ids").addEventListener("change", runTokenizer);
  $("#att-run").addEventListener("click", runAttention);
  $("#att-layer").addEventListener("change", runAttention);
  $("#att-head").addEventListener("change", drawAttention);
  $("#export-all").addEventListener("click", (e) => { e.preventDefault(); download("/api/conversations/export", "llmlab-conversations.json"); });
  loadModels(saved).then(async () => {
    const list = await loadHistory();
    const open = localStorage.getItem(OPEN_KEY);
    if (open && list.some((c) => c.id === open)) await openConversation(open);
    refreshStatus();
  });
  setInterval(refreshStatus, 3000);
}

init();
