// A face that exists only for tests (test/face-registry.test.ts): everything the LKM is not, so
// its scope's isolation shows. Form and text bodies (no JSON), a 64-byte body limit, an
// OAuth2-shaped error body, a table and a migration of its own, a readiness check and a runtime
// section.
import { z } from 'zod';
import type { FastifyInstance } from 'fastify';
import type { CoreContext, Face } from '../../src/core/face.js';
import { AppError, defineCatalogue } from '../../src/errors.js';

export const exampleErrors = defineCatalogue('example', {
  EXAMPLE_ERR_EMPTY: { status: 422, message: 'Say something' },
});

const schema = z.object({
  EXAMPLE_BODY_LIMIT: z.coerce.number().int().min(1).max(1024).default(64),
  EXAMPLE_GREETING: z.string().min(1).default('hello'),
});

export interface ExampleConfig {
  bodyLimit: number;
  greeting: string;
}

/** Echoes text, stores form notes in `example_note`, fails on request. */
async function register(scope: FastifyInstance, core: CoreContext, config: ExampleConfig): Promise<void> {
  scope.removeAllContentTypeParsers();
  scope.addContentTypeParser('text/plain', { parseAs: 'string' }, (_request, body, done) => done(null, body));
  scope.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_request, body, done) =>
    done(null, Object.fromEntries(new URLSearchParams(body as string))),
  );
  let echoes = 0;
  core.addReadinessCheck('example', () => core.db.query('SELECT count(*) FROM example_note'));
  core.addRuntimeFigures('example', () => ({ echoes }));

  scope.post('/echo', async (request) => {
    if (typeof request.body !== 'string' || request.body === '') throw exampleErrors.error('EXAMPLE_ERR_EMPTY');
    echoes += 1;
    return { greeting: config.greeting, echo: request.body };
  });
  scope.post('/note', async (request, reply) => {
    const text = (request.body as Record<string, string> | undefined)?.text;
    if (!text) throw exampleErrors.error('EXAMPLE_ERR_EMPTY', { message: 'text is required' });
    await core.db.query('INSERT INTO example_note (text) VALUES ($1)', [text]);
    return reply.code(201).send({ stored: text });
  });
  // A core code raised in the face: the face's body, the core's status and headers.
  scope.get('/unavailable', async () => {
    throw new AppError('DB_ERR_UNAVAILABLE', { headers: { 'retry-after': '5' } });
  });
}

export const exampleFace: Face<ExampleConfig, typeof schema> = {
  name: 'example',
  prefix: '/example/v1',
  configSchema: schema,
  loadConfig(env, problems) {
    // A rule spanning variables, listed with every other problem.
    if (env.EXAMPLE_GREETING.length > env.EXAMPLE_BODY_LIMIT) problems.push('EXAMPLE_GREETING: longer than EXAMPLE_BODY_LIMIT');
    return { bodyLimit: env.EXAMPLE_BODY_LIMIT, greeting: env.EXAMPLE_GREETING };
  },
  migrations: [{ version: 1, name: 'notes', sql: 'CREATE TABLE example_note (id bigserial PRIMARY KEY, text text NOT NULL);' }],
  errors: exampleErrors,
  bodyLimit: (config) => config.bodyLimit,
  errorBody: (error) => ({
    contentType: 'application/json; charset=utf-8',
    body: { error: error.code.toLowerCase(), error_description: error.message },
  }),
  register,
};
