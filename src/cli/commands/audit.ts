import { verifyChain } from '../../audit/verify.js';
import { UsageError, type Command } from '../command.js';
import { withContext } from '../context.js';
import { printJson, say } from '../io.js';

const verify: Command = {
  words: ['audit', 'verify'],
  synopsis: '',
  summary: 'check the audit hash chain end to end (v1 and v2 entries, up to audit_head); exit 0 if intact, else name the first altered, missing, reordered or foreign entry and exit 1',
  async run({ positionals, io }) {
    if (positionals.length > 0) throw new UsageError('audit verify takes no arguments');
    const result = await withContext(io.env, ({ db }) =>
      verifyChain(db, {
        onProgress: (n) => {
          if (!io.json && io.stderr.isTTY) io.stderr.write(`\rverified ${n} entries`);
        },
      }),
    );
    if (!io.json && io.stderr.isTTY) io.stderr.write('\n');
    if (io.json) {
      printJson(io, result);
      return result.ok ? 0 : 1;
    }
    if (result.anchor) say(io, `retention anchor: entries through seq ${result.anchor.seq} were removed (hash ${result.anchor.hash})`);
    if (result.legacy > 0) say(io, `${result.legacy} entries predate the chain (logged before the audit migration) and are not covered`);
    if (!result.ok && result.problem) {
      io.stdout.write(`audit chain BROKEN after ${result.checked} intact entries: ${result.problem.message}\n`);
      return 1;
    }
    const head = result.head ? `; head seq ${result.head.seq} (id ${result.head.id}) hash ${result.head.hash}` : '';
    const versions = `(v1 encoding ${result.byVersion.v1}, v2 ${result.byVersion.v2})`;
    io.stdout.write(`audit chain intact: ${result.checked} entries verified ${versions}${head}\n`);
    return 0;
  },
};

/** `strongroom audit ...`: proving the request log was not altered. */
export const auditCommands: Command[] = [verify];
