// soundflow capture worklet: device-rate audio (often 48 kHz) → mono 16 kHz float32 frames.
//
// Runs on the audio thread. Each 128-sample render quantum is downmixed to mono, low-passed
// with a windowed-sinc FIR (cutoff just under 8 kHz, so nothing folds back when we drop to
// 16 kHz) and resampled by linear interpolation at the exact rate ratio (48000/16000 = 3,
// 44100/16000 = 2.75625, ...). Every `frameSamples` output samples (100 ms by default) the frame
// is posted to the page together with its RMS level; the page sends it over the WebSocket.

const TARGET_RATE = 16000;

class SoundflowDownsampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.frameSamples = opts.frameSamples || 1600;
    this.ratio = sampleRate / TARGET_RATE; // input samples per output sample
    // ~32 taps per output sample: a transition band of ~2.7 kHz above 7.6 kHz at 44.1/48 kHz
    this.taps = this.ratio > 1 ? this.designLowpass(2 * Math.round(16 * this.ratio) + 1, 7600 / sampleRate) : null;
    this.ring = this.taps ? new Float32Array(this.taps.length * 2) : null; // doubled: no modulo in the dot product
    this.ringPos = 0;
    this.inIndex = 0; // global index of the next input sample
    this.nextOut = 0; // fractional input index of the next output sample
    this.prev = 0; // previous filtered sample (for interpolation)
    this.out = new Float32Array(this.frameSamples);
    this.n = 0;
    this.sumSq = 0;
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data === "stop") this.running = false;
    };
  }

  // Blackman-windowed sinc low-pass, unity DC gain. fc is normalised (cycles per sample).
  designLowpass(n, fc) {
    const h = new Float32Array(n);
    const m = (n - 1) / 2;
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const x = i - m;
      const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
      const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (n - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (n - 1));
      h[i] = sinc * w;
      sum += h[i];
    }
    for (let i = 0; i < n; i++) h[i] /= sum;
    return h;
  }

  filter(x) {
    if (!this.taps) return x;
    const L = this.taps.length;
    this.ring[this.ringPos] = x;
    this.ring[this.ringPos + L] = x;
    this.ringPos = (this.ringPos + 1) % L;
    // ring[ringPos .. ringPos+L) holds the last L samples, oldest first
    let acc = 0;
    const base = this.ringPos;
    for (let k = 0; k < L; k++) acc += this.taps[k] * this.ring[base + k];
    return acc;
  }

  emit(y) {
    this.out[this.n++] = y;
    this.sumSq += y * y;
    if (this.n === this.frameSamples) {
      const rms = Math.sqrt(this.sumSq / this.n);
      this.port.postMessage({ pcm: this.out, rms }, [this.out.buffer]);
      this.out = new Float32Array(this.frameSamples);
      this.n = 0;
      this.sumSq = 0;
    }
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const channels = input.length;
    const len = input[0].length;
    for (let i = 0; i < len; i++) {
      let x = 0;
      for (let c = 0; c < channels; c++) x += input[c][i];
      x /= channels;
      const y = this.filter(x);
      const idx = this.inIndex++;
      // output samples that fall in (idx-1, idx]: interpolate between prev and y
      while (this.nextOut <= idx) {
        const frac = this.nextOut - (idx - 1);
        this.emit(this.prev + (y - this.prev) * (idx === 0 ? 1 : frac));
        this.nextOut += this.ratio;
      }
      this.prev = y;
    }
    return true;
  }
}

registerProcessor("soundflow-downsampler", SoundflowDownsampler);
