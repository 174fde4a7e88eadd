// Assistant messages as Markdown. A model's output is untrusted: marked (vendor/marked.umd.js) parses it with raw
// HTML shown as text and images shown as links (an <img> would fetch from any host the model names, and could
// carry the conversation there), then DOMPurify (vendor/purify.min.js) keeps only the elements Markdown makes and
// drops event handlers and javascript: URLs, whatever got past.

const escape = (s) => s.replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;",
                                                        "'": "&#39;"})[c]);

const parser = new globalThis.marked.Marked({
  gfm: true,
  breaks: true,  // a single newline breaks the line, as in the plain text the page showed before
  renderer: {
    html: ({text, block}) => (block ? `<p>${escape(text)}</p>` : escape(text)),
    image: ({href, text}) => `<a href="${escape(href)}">${escape(text || href)}</a>`,
  },
});

const ALLOWED = {
  ALLOWED_TAGS: ["p", "br", "hr", "strong", "em", "del", "code", "pre", "blockquote", "ul", "ol", "li", "a",
                 "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td", "input"],
  ALLOWED_ATTR: ["href", "title", "start", "align", "class", "type", "checked", "disabled"],  // input: task lists
  RETURN_DOM_FRAGMENT: true,
};

// replaces the children of `el` with `text` rendered as sanitised Markdown
export function renderMarkdown(el, text) {
  const fragment = globalThis.DOMPurify.sanitize(parser.parse(text), ALLOWED);
  for (const a of fragment.querySelectorAll("a[href]")) {  // a link opens beside the chat, not instead of it
    a.target = "_blank";
    a.rel = "noopener noreferrer";
  }
  el.replaceChildren(fragment);
}
