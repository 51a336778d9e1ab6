// Server-sent events read from a fetch() body (EventSource cannot POST): yields the `data`
// of each event as it arrives, until the stream ends or `data: [DONE]`.

export async function* sseData(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finished = false;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      finished = done;
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      // Events end with a blank line (\n\n, \r\n\r\n or \r\r).
      for (;;) {
        const match = /\r\n\r\n|\n\n|\r\r/.exec(buffer);
        if (match === null) break;
        const event = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        const data = eventData(event);
        if (data === null) continue;
        if (data === "[DONE]") return;
        yield data;
      }
      if (done) {
        const data = eventData(buffer);
        if (data !== null && data !== "[DONE]") yield data;
        return;
      }
    }
  } finally {
    // Stopped early (the consumer broke off, or [DONE]): let the connection go.
    if (!finished) await reader.cancel().catch(() => undefined);
    reader.releaseLock();
  }
}

function eventData(event: string): string | null {
  const lines: string[] = [];
  for (const line of event.split(/\r\n|\n|\r/)) {
    if (line.startsWith("data:")) lines.push(line.slice(line.startsWith("data: ") ? 6 : 5));
  }
  return lines.length === 0 ? null : lines.join("\n");
}
