// Assistant messages as Markdown. A model's output is untrusted: marked (vendor/marked.umd.js) parses it with raw
// HTML shown as text and images shown as links (an <img> would fetch from any host the model names, and could
// carry the conversation there), then DOMPurify (vendor/purify.min.js) keeps only the elements Markdown makes and
// drops event handlers and javascript: URLs, whatever got past. A region the model names
// (<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>) shows as its label, marked in its box's colour on the
// annotated image (the palette of seekmoe/multimodal/grounding.py), its boxes in the tooltip.

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

const REGION = /(?:<\|ref\|>([^<]{0,200})<\|\/ref\|>\s*)?<\|det\|>([^<]{0,2000})<\|\/det\|>/g;
const PALETTE = ["#e6194b", "#3cb44b", "#0082c8", "#f58230", "#911eb4", "#46f0f0", "#f032e6", "#d2f53c"];

// each region tag in the text (not in code) -> <mark class="region">label</mark>
function markRegions(root) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const found = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (node.data.includes("<|det|>") && !node.parentElement?.closest("code")) found.push(node);
  }
  let count = 0;
  for (const node of found) {
    const pieces = [];
    let last = 0;
    for (const m of node.data.matchAll(REGION)) {
      const mark = document.createElement("mark");
      mark.className = "region";
      mark.textContent = (m[1] ?? "").trim() || "▭";
      mark.title = m[2].trim();
      mark.style.setProperty("--region", PALETTE[count++ % PALETTE.length]);
      pieces.push(node.data.slice(last, m.index), mark);
      last = m.index + m[0].length;
    }
    node.replaceWith(...pieces, node.data.slice(last));
  }
}

// replaces the children of `el` with `text` rendered as sanitised Markdown
export function renderMarkdown(el, text) {
  const fragment = globalThis.DOMPurify.sanitize(parser.parse(text), ALLOWED);
  markRegions(fragment);
  for (const a of fragment.querySelectorAll("a[href]")) {  // a link opens beside the chat, not instead of it
    a.target = "_blank";
    a.rel = "noopener noreferrer";
  }
  el.replaceChildren(fragment);
}
