// Test guard: end-to-end tests need root (network namespaces, BPF). They fail loudly without
// it; they never skip.
export function requireRoot(): void {
  if (process.getuid?.() !== 0) {
    throw new Error('these tests need root (network namespaces and BPF): run the suite as root');
  }
}
