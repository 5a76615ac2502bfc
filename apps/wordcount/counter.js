// Word counter for disruptor, written in the original project's worker
// style: it receives jobs with process.on('message') and answers with
// process.send(). Each job is a string of text; the answer gives the
// number of words and the number of distinct Porter stems among them.
'use strict';

const natural = require('natural');

const tokenizer = new natural.WordTokenizer();

function count(text) {
  const words = tokenizer.tokenize(String(text));
  const stems = new Set(words.map((w) => natural.PorterStemmer.stem(w)));
  return { message: text, total: words.length, unique: stems.size };
}

process.on('message', (message) => {
  process.send(count(message));
});
