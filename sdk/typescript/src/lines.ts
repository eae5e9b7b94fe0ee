/**
 * Splits a byte stream into `\n`-terminated lines with a bound on the length of a line: a line
 * longer than `maxLineBytes` is an error as soon as that many bytes are buffered without a line
 * end, so memory never grows beyond the bound. (Node only: it works on `Buffer`s.)
 */
export class LineSplitter {
  readonly #max: number;
  #parts: Buffer[] = [];
  #length = 0;

  constructor(maxLineBytes: number) {
    this.#max = maxLineBytes;
  }

  /**
   * Feeds a chunk; returns the complete lines it finished (without `\n` or a trailing `\r`),
   * or `null` when the buffered line exceeds the limit.
   */
  push(chunk: Buffer): string[] | null {
    const lines: string[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl === -1) break;
      const piece = chunk.subarray(start, nl);
      if (this.#length + piece.length > this.#max) return null;
      const line = this.#parts.length === 0 ? piece : Buffer.concat([...this.#parts, piece]);
      this.#parts = [];
      this.#length = 0;
      let text = line.toString("utf8");
      if (text.endsWith("\r")) text = text.slice(0, -1);
      lines.push(text);
      start = nl + 1;
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      if (this.#length + rest.length > this.#max) return null;
      // Copy: the socket may reuse the chunk's memory.
      this.#parts.push(Buffer.from(rest));
      this.#length += rest.length;
    }
    return lines;
  }

  /** Bytes of an unfinished line. */
  get buffered(): number {
    return this.#length;
  }
}
