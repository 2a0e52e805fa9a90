// Reads agentwire's UI message stream with the `ai` package's own code. Prints one JSON line.
//
//   node aisdk.mjs read   '{"url", "token", "id", "message"}'   POST /api/chat; parseJsonEventStream with
//                         uiMessageChunkSchema (every chunk must validate), then readUIMessageStream
//   node aisdk.mjs resume '{"url", "token", "id"}'              GET /api/chat/{id}/stream, read the same way
//   node aisdk.mjs chat   '{"url", "resumeUrl", "token", "id", "message"}'
//                         what useChat does: a chat (AbstractChat, the engine under useChat) with
//                         DefaultChatTransport sends the message at `url`; if that stream breaks, it
//                         resumes with resumeStream(), which GETs `resumeUrl`/api/chat/{id}/stream
import {
  AbstractChat, DefaultChatTransport, parseJsonEventStream, readUIMessageStream, uiMessageChunkSchema,
} from "ai";

const [mode, config] = [process.argv[2], JSON.parse(process.argv[3])];
const headers = config.token ? { authorization: `Bearer ${config.token}` } : {};

async function read(response) {
  const chunkTypes = [];
  const invalid = [];
  const chunks = parseJsonEventStream({ stream: response.body, schema: uiMessageChunkSchema }).pipeThrough(
    new TransformStream({
      transform(parsed, controller) {
        if (!parsed.success) {
          invalid.push(String(parsed.error?.message ?? parsed.error));
          return;
        }
        chunkTypes.push(parsed.value.type);
        controller.enqueue(parsed.value);
      },
    }),
  );
  let message = null;
  const errors = [];
  for await (const snapshot of readUIMessageStream({ stream: chunks, onError: (e) => errors.push(String(e)) })) {
    message = snapshot;
  }
  return {
    status: response.status, header: response.headers.get("x-vercel-ai-ui-message-stream"),
    chunkTypes, invalid, errors, message,
  };
}

// The state useChat keeps in React, kept in plain fields here.
class State {
  status = "ready";
  error = undefined;
  messages = [];
  pushMessage = (message) => { this.messages = [...this.messages, message]; };
  popMessage = () => { this.messages = this.messages.slice(0, -1); };
  replaceMessage = (index, message) => { this.messages = this.messages.map((m, i) => (i === index ? message : m)); };
  snapshot = (thing) => structuredClone(thing);
}

class Chat extends AbstractChat {
  constructor(init) {
    super({ ...init, state: new State() });
  }
}

let result;
if (mode === "read") {
  const response = await fetch(`${config.url}/api/chat`, {
    method: "POST",
    headers: { ...headers, "content-type": "application/json" },
    body: JSON.stringify({
      id: config.id, trigger: "submit-message",
      messages: [{ id: "user-1", role: "user", parts: [{ type: "text", text: config.message }] }],
    }),
  });
  result = response.ok ? await read(response) : { status: response.status, body: await response.json() };
} else if (mode === "resume") {
  const response = await fetch(`${config.url}/api/chat/${encodeURIComponent(config.id)}/stream`, { headers });
  result = response.status === 200 ? await read(response) : { status: response.status, body: await response.text() };
} else if (mode === "chat") {
  const finishes = [];
  const chat = new Chat({
    id: config.id,
    transport: new DefaultChatTransport({
      api: `${config.url}/api/chat`,
      headers,
      prepareReconnectToStreamRequest: ({ id }) => ({
        api: `${config.resumeUrl ?? config.url}/api/chat/${encodeURIComponent(id)}/stream`, headers,
      }),
    }),
    onFinish: ({ isDisconnect, isError, finishReason }) => finishes.push({ isDisconnect, isError, finishReason }),
  });
  await chat.sendMessage({ text: config.message });
  const afterSend = { status: chat.status, error: chat.error ? String(chat.error.message ?? chat.error) : null };
  let resumed = false;
  if (chat.status === "error") {
    await chat.resumeStream();
    resumed = true;
  }
  result = { afterSend, resumed, status: chat.status, finishes, messages: chat.messages };
} else {
  throw new Error(`unknown mode ${mode}`);
}
process.stdout.write(JSON.stringify(result) + "\n");
