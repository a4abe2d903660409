// Copies an ELF64 shared object with its requirement of one symbol version (e.g.
// GLIBC_2.38) marked weak (VER_FLG_WEAK), so that an older libc's loader lets it load; the
// symbols of that version must then come from elsewhere (isoc23.c, preloaded). It reads the
// version needs the way the loader does, through PT_DYNAMIC, and changes only those flags.
// Usage: node weak-version.js IN OUT VERSION
'use strict';
const fs = require('fs');

const [input, output, version] = process.argv.slice(2);
if (!version) {
  console.error('usage: node weak-version.js IN OUT VERSION');
  process.exit(2);
}
const elf = fs.readFileSync(input);
if (elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1) {
  console.error(`${input}: not a little-endian ELF64 file`);
  process.exit(1);
}

const PT_LOAD = 1, PT_DYNAMIC = 2;
const DT_STRTAB = 5n, DT_VERNEED = 0x6ffffffen, DT_VERNEEDNUM = 0x6fffffffn;
const VER_FLG_WEAK = 0x2;

const phoff = Number(elf.readBigUInt64LE(0x20));
const phentsize = elf.readUInt16LE(0x36);
const segments = [];
for (let i = 0; i < elf.readUInt16LE(0x38); i++) {
  const at = phoff + i * phentsize;
  segments.push({
    type: elf.readUInt32LE(at),
    offset: Number(elf.readBigUInt64LE(at + 8)),
    vaddr: Number(elf.readBigUInt64LE(at + 16)),
    filesz: Number(elf.readBigUInt64LE(at + 32)),
  });
}
// The dynamic table holds addresses; the file holds bytes.
const fileOffset = (addr) => {
  const s = segments.find((s) => s.type === PT_LOAD && addr >= s.vaddr && addr < s.vaddr + s.filesz);
  if (!s) throw new Error(`address 0x${addr.toString(16)} is in no loaded segment`);
  return addr - s.vaddr + s.offset;
};

const dynamic = segments.find((s) => s.type === PT_DYNAMIC);
if (!dynamic) throw new Error(`${input} has no dynamic section`);
const dyn = new Map();
for (let at = dynamic.offset; at < dynamic.offset + dynamic.filesz; at += 16) {
  const tag = elf.readBigInt64LE(at);
  if (tag === 0n) break; // DT_NULL
  dyn.set(tag, Number(elf.readBigUInt64LE(at + 8)));
}
if (!dyn.has(DT_VERNEED)) throw new Error(`${input} needs no symbol versions`);
const strtab = fileOffset(dyn.get(DT_STRTAB));
const name = (at) => elf.toString('latin1', strtab + at, elf.indexOf(0, strtab + at));

// Elf64_Verneed: one per library (vn_cnt u16 at 2, vn_aux u32 at 8,
// vn_next u32 at 12), each with a chain of Elf64_Vernaux: one per version (vna_flags u16
// at 4, vna_name u32 at 8, vna_next u32 at 12). Offsets are relative to each entry.
let weakened = 0;
let need = fileOffset(dyn.get(DT_VERNEED));
for (let i = 0; i < (dyn.get(DT_VERNEEDNUM) ?? 0); i++) {
  let aux = need + elf.readUInt32LE(need + 8);
  for (let j = 0; j < elf.readUInt16LE(need + 2); j++) {
    if (name(elf.readUInt32LE(aux + 8)) === version) {
      elf.writeUInt16LE(elf.readUInt16LE(aux + 4) | VER_FLG_WEAK, aux + 4);
      weakened++;
    }
    aux += elf.readUInt32LE(aux + 12);
  }
  need += elf.readUInt32LE(need + 12);
}
// An unchanged copy would fail to load just like the original: say so rather than write it.
if (!weakened) {
  console.error(`${input} does not need ${version}`);
  process.exit(1);
}
fs.writeFileSync(output, elf);
