// A worker in the original 2013 README's style, unmodified node.js.
var count = 0;

process.on('message', function(message) {
    count++;
    console.log('shouting job ' + count);
    process.send({ message: message, shouted: String(message).toUpperCase(), pid: process.pid, count: count });
});
