// Writes secondarymx(8) in roff from the text of `secondarymx --help` (argv[3]), so the
// man page and --help never differ.
const [version, help] = process.argv.slice(2);
const escape = (line: string) =>
  line
    .replace(/\\/g, '\\e')
    .replace(/^([.'])/, '\\&$1')
    .replace(/-/g, '\\-');
const page = [
  `.TH SECONDARYMX 8 "" "alternc-secondarymx ${version}" "System Administration"`,
  '.SH NAME',
  'secondarymx \\- secondary (backup) MX for AlternC hosting servers',
  '.SH SYNOPSIS',
  '.B secondarymx',
  '.I command',
  '[\\fB\\-\\-config\\fR \\fIFILE\\fR] [\\fIoptions\\fR]',
  '.SH DESCRIPTION',
  'Accepts mail for the domains and addresses AlternC hosts while the primary mail server is down,',
  'keeps it in a durable spool, and replays it to the primary once it answers.',
  'The text below is the one',
  '.B secondarymx \\-\\-help',
  'prints.',
  '.PP',
  '.nf',
  ...help.split('\n').map(escape),
  '.fi',
  '.SH FILES',
  '.TP',
  '.I /etc/secondarymx/secondarymx.yaml',
  'the configuration (0640 root:secondarymx)',
  '.TP',
  '.I /var/spool/secondarymx',
  'the spool (0700 secondarymx)',
  '.TP',
  '.I /usr/share/doc/alternc-secondarymx/secondarymx.example.yaml',
  'every configuration key with its default',
  '.SH SEE ALSO',
  '.BR systemctl (1),',
  '.BR postqueue (1),',
  '.BR qshape (1)',
  '',
];
process.stdout.write(page.join('\n'));
export {}; // a module: its names stay its own
