// The conversations, kept in localStorage under one key across reloads:
//   {current: id, conversations: [{id, system, turns: [{role, content, images?, dropped?}], updated}]}
// The API key is never here (it stays in sessionStorage). localStorage holds about 5 MB per origin and an attached
// image or recording, as base64 in its content part, can take most of that: when a save does not fit, the media
// are dropped from the stored copy (the open page keeps sending them) and the turn says how many were dropped;
// when that does not fit either, the oldest other conversations go.

const KEY = "seekmoe-chats";

export function newConversation(system = "") {
  return {id: `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`, system, turns: [],
          updated: Date.now()};
}

// {current, conversations}, newest first; what cannot be read counts as nothing stored
export function load() {
  try {
    const stored = JSON.parse(localStorage.getItem(KEY));
    if (stored && Array.isArray(stored.conversations)) return stored;
  } catch (_) { /* not JSON: start afresh */ }
  return {current: null, conversations: []};
}

// a turn without its images and audio (a reply's: its annotated images): the text parts joined, and how many
// were dropped
function withoutMedia(turn) {
  const annotated = turn.images?.length ?? 0;
  if (typeof turn.content === "string" && !annotated) return turn;
  const texts = typeof turn.content === "string" ? [turn.content]
    : turn.content.filter((p) => p.type === "text").map((p) => p.text);
  const parts = typeof turn.content === "string" ? 1 : turn.content.length;
  const dropped = (turn.dropped || 0) + parts - texts.length + annotated;
  return {role: turn.role, content: texts.join("\n"), ...(dropped ? {dropped} : {})};
}

// writes `conversations` (the open one among them, unless it is empty); false when even the smallest copy does not
// fit in the browser's storage
export function save(conversations, current) {
  // a new chat nobody wrote in yet is not listed; its system prompt is kept all the same, to find after a reload
  let kept = conversations.filter((c) => c.turns.length || c.id === current.id)
    .sort((a, b) => b.updated - a.updated);
  const write = () => {
    try {
      localStorage.setItem(KEY, JSON.stringify({current: current.id, conversations: kept}));
      return true;
    } catch (_) {  // QuotaExceededError
      return false;
    }
  };
  if (write()) return true;
  kept = kept.map((c) => ({...c, turns: c.turns.map(withoutMedia)}));
  while (!write()) {
    const oldest = kept.findLastIndex((c) => c.id !== current.id);
    if (oldest < 0) return false;
    kept.splice(oldest, 1);
  }
  return true;
}

// the conversation's name in the list: its first words
export function title(conversation) {
  const first = conversation.turns.find((t) => t.role === "user");
  if (!first) return "New chat";
  const text = typeof first.content === "string" ? first.content
    : first.content.filter((p) => p.type === "text").map((p) => p.text).join(" ");
  const words = text.replace(/\s+/g, " ").trim() || "(attachments)";
  return words.length > 40 ? `${words.slice(0, 39)}…` : words;
}
