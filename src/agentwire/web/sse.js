// Incremental text/event-stream parser (WHATWG rules: CR, LF or CRLF line ends, `:` comments).
export class SseParser {
  constructor(onMessage, onComment = () => {}) {
    this.onMessage = onMessage;
    this.onComment = onComment;
    this.partial = []; // the start of a line whose end has not come yet, as it came
    this.crEnded = false; // the last chunk ended with CR: a LF first in the next one is its CRLF
    this.eol = /\r\n?|\n/g;
    this.reset();
  }

  reset() {
    this.event = '';
    this.data = [];
    this.id = null;
  }

  // Linear in what it is given, however it is cut: each chunk is searched once, and a line that
  // spans chunks is joined once, when its end comes.
  push(text) {
    if (!text) return;
    let start = this.crEnded && text[0] === '\n' ? 1 : 0;
    this.crEnded = false;
    this.eol.lastIndex = start;
    for (let m; (m = this.eol.exec(text));) {
      let line = text.slice(start, m.index);
      if (this.partial.length) {
        this.partial.push(line);
        line = this.partial.join('');
        this.partial = [];
      }
      start = m.index + m[0].length;
      this.crEnded = m[0] === '\r' && start === text.length;
      this.line(line);
    }
    if (start < text.length) this.partial.push(text.slice(start));
  }

  line(line) {
    if (line === '') {
      if (this.data.length) {
        this.onMessage({ event: this.event || 'message', data: this.data.join('\n'), id: this.id });
      }
      this.reset();
      return;
    }
    if (line[0] === ':') {
      this.onComment(line.slice(1).trim());
      return;
    }
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'data') this.data.push(value);
    else if (field === 'event') this.event = value;
    else if (field === 'id' && !value.includes('\0')) this.id = value;
    // `retry:` is ignored: the manager's backoff decides.
  }
}
