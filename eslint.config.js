// Lint: typescript-eslint's recommended rules, and promises that must never float (an
// unhandled rejection in the relay once left a spool rescan crashing the daemon).
import tseslint from 'typescript-eslint';

export default tseslint.config({ ignores: ['dist/', 'node_modules/', 'bench/.tmp/', '.scratch/', 'eslint.config.js'] }, ...tseslint.configs.recommended, {
  files: ['**/*.ts'],
  languageOptions: { parserOptions: { project: ['./tsconfig.json', './test/tsconfig.json'], tsconfigRootDir: import.meta.dirname } },
  rules: {
    '@typescript-eslint/no-floating-promises': ['error', { ignoreVoid: false }],
    '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: false }],
    '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
  },
});
