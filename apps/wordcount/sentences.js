// Sentence splitter for disruptor, in the original project's worker style
// (process.on('message') / process.send()). Each job is a string of text;
// the answer is the list of its sentences, which a pipeline's next stage
// (`--then apps/wordcount/counter`) gets one by one, or null for text
// without any (the line is dropped).
'use strict';

function sentences(text) {
  const found = String(text).match(/[^.!?]+[.!?]*/g) || [];
  const out = found.map((s) => s.trim()).filter((s) => s.length > 0);
  return out.length > 0 ? out : null;
}

process.on('message', (message) => {
  process.send(sentences(message));
});
