// A filtered Recommend from Node.js, loading the .proto at run time (no code generation).
//   npm install && node recommend.js 127.0.0.1:50051 u00001 'price < 50 and brand in ("a", "b")'
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO = path.join(__dirname, "..", "..", "..", "protos", "recsvc", "v1", "recommender.proto");
const definition = protoLoader.loadSync(PROTO, {
  keepCase: true, // field names as in the .proto: user_id, exclude_seen, ...
  longs: String,
  enums: String,
  defaults: true,
});
const { Recommender } = grpc.loadPackageDefinition(definition).recsvc.v1;

const [target = "127.0.0.1:50051", userId = "u00001", filter = ""] = process.argv.slice(2);
const client = new Recommender(target, grpc.credentials.createInsecure());
const deadline = new Date(Date.now() + 5000); // recsvc bounds its work by the caller's deadline

client.Recommend(
  { user_id: userId, k: 5, filter, context: { segment: "web" } },
  { deadline },
  (error, response) => {
    if (error) {
      // Bad input is INVALID_ARGUMENT with a message naming the field (e.g. "filter: position 7: ...").
      console.error(`${grpc.status[error.code]}: ${error.details}`);
      process.exitCode = 1;
    } else {
      console.log(`model ${response.model_version}, strategy ${response.strategy}`);
      for (const item of response.items) {
        const rule = item.rule ? ` (rule ${item.rule})` : "";
        console.log(`${item.item_id}\t${item.score.toFixed(4)}${rule}`);
      }
    }
    client.close();
  },
);
