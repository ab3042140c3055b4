// Shrinks photos in the browser before the page uploads them: plain JavaScript, no build step.
//
// Every upload on a Gradio page (a chosen, dropped or pasted file, a webcam snapshot, a multi-file
// button) ends in one request: Gradio's client POSTs a FormData of "files" to <root>/gradio_api/upload
// through the global fetch. This wraps fetch and, for that request only, replaces each JPEG, PNG or WebP
// photo by a copy that is upright (EXIF orientation applied), at most `maxSide` pixels on its long side,
// re-encoded as JPEG and carrying no metadata (no EXIF, no GPS); a JPEG that is upright and small
// enough already goes as it came, less its metadata (not decoded, not re-encoded). The file keeps its
// name. Anything else, a photo the browser cannot decode or one over the server's pixel limit, and any
// failure, goes as it was: the server still decodes, checks and explains every upload. Live webcam
// streams (frames sent as data URLs with each event) never come through here.
//
// app.py runs it once per page load with the page's settings: (settings) => installs the wrapper.
(settings) => {
  if (window.imageClassifierUploads) return; // installed already
  // JPEG quality 0.93: against 0.95 it sends a sixth fewer bytes (a detailed 12 MP photo: 182 KB, not 220;
  // 200 ms less over a 1.5 Mbit/s uplink) and moves the model's answers as little (15 photos: median 0.013
  // in probability against 0.012, at most 0.041 against 0.033); 0.92 and 0.9 moved them up to 0.066 and
  // 0.059 (BENCHMARKS.md, section 14c).
  const { maxSide, maxPixels, quality = 0.93 } = settings;
  const sendAsIs = window.fetch;
  // A JPEG of at most maxSide × maxSide pixels is well under this, whatever its quality and metadata.
  const SMALL_JPEG_BYTES = 4 * maxSide * maxSide;

  function isUpload(input, init) {
    if (!init || !(init.body instanceof FormData) || String(init.method).toUpperCase() !== "POST") {
      return false;
    }
    const url = new URL(input instanceof Request ? input.url : String(input), window.location.href);
    return url.pathname.endsWith("/gradio_api/upload");
  }

  // JPEG, PNG or WebP (what cameras, phones, clipboards and webcams give, and where EXIF lives), from
  // the first bytes: pasted pictures and webcam snapshots come without a type.
  async function photoType(file) {
    const head = new Uint8Array(await file.slice(0, 12).arrayBuffer());
    const ascii = (start, end) => String.fromCharCode(...head.subarray(start, end));
    if (head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff) return "image/jpeg";
    if (ascii(0, 8) === "\x89PNG\r\n\x1a\n") return "image/png";
    if (ascii(0, 4) === "RIFF" && ascii(8, 12) === "WEBP") return "image/webp";
    return null;
  }

  // Width and height as a person sees the photo (EXIF orientation applied), from the header alone. A
  // JPEG's come from its segments (1 ms); anything else, or a JPEG whose picture starts further in than
  // HEADER_BYTES, from an <img>, which does not decode its pixels until it is drawn but takes 15-50 ms
  // to load a 4 MB photo.
  const HEADER_BYTES = 256 * 1024;

  async function uprightSize(file, type) {
    if (type === "image/jpeg") {
      let header = null;
      try {
        header = jpegHeader(new Uint8Array(await file.slice(0, HEADER_BYTES).arrayBuffer()));
      } catch (error) {
        console.warn(`Reading ${file.name}'s size from an <img>: its segments could not be read:`, error);
      }
      if (header) {
        const [width, height] = header.size;
        return header.orientation >= 5 && header.orientation <= 8 ? [height, width] : [width, height];
      }
    }
    return imageSize(file);
  }

  async function imageSize(file) {
    const url = URL.createObjectURL(file);
    try {
      const image = new Image();
      await new Promise((resolve, reject) => {
        image.onload = resolve;
        image.onerror = () => reject(new Error("the browser cannot read this image"));
        image.src = url;
      });
      return [image.naturalWidth, image.naturalHeight];
    } finally {
      URL.revokeObjectURL(url);
    }
  }

  // A JPEG that is small enough already and upright as stored goes without decoding or re-encoding: the
  // same bytes with its metadata segments left out (EXIF with its GPS and camera, XMP, IPTC, comments,
  // anything after the picture). Kept: the picture's own segments, JFIF (APP0), the colour profile
  // (APP2 ICC_PROFILE) and Adobe's colour transform flag (APP14). Returns null where the file needs the
  // full path: too big, rotated by EXIF, or not a JPEG this reads to the end.
  const KEPT_APPS = { 0xe0: "JFIF", 0xe2: "ICC_PROFILE\0", 0xee: "Adobe" };
  const SOF = new Set([0xc0, 0xc1, 0xc2, 0xc3, 0xc5, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcd, 0xce, 0xcf]);

  function startsWith(bytes, at, text) {
    for (let i = 0; i < text.length; i++) if (bytes[at + i] !== text.charCodeAt(i)) return false;
    return true;
  }

  // EXIF Orientation (tag 0x0112 in IFD0) of an APP1 segment's TIFF data at `tiff`; 1 where absent.
  function exifOrientation(bytes, tiff, end) {
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    const little = bytes[tiff] === 0x49;
    const ifd = tiff + view.getUint32(tiff + 4, little);
    if (ifd + 2 > end) return 0;
    const count = view.getUint16(ifd, little);
    for (let entry = ifd + 2; entry < Math.min(ifd + 2 + 12 * count, end - 11); entry += 12) {
      if (view.getUint16(entry, little) === 0x0112) return view.getUint16(entry + 8, little);
    }
    return 1;
  }

  // Where the entropy-coded data starting at `at` ends: the next marker that is neither a stuffed 0xFF
  // nor a restart marker.
  function entropyEnd(bytes, at) {
    for (let i = at; i + 1 < bytes.length; i++) {
      if (bytes[i] === 0xff && bytes[i + 1] !== 0 && (bytes[i + 1] < 0xd0 || bytes[i + 1] > 0xd7)) return i;
    }
    return -1;
  }

  // The stored width and height a frame header (SOFn) segment at `at` gives.
  function frameSize(bytes, at) {
    return [(bytes[at + 7] << 8) | bytes[at + 8], (bytes[at + 5] << 8) | bytes[at + 6]];
  }

  // The EXIF orientation a segment at `at` (ending at `end`) gives; null where it is not EXIF's APP1.
  function segmentOrientation(bytes, marker, at, end) {
    if (marker !== 0xe1 || !startsWith(bytes, at + 4, "Exif\0\0")) return null;
    return exifOrientation(bytes, at + 10, end);
  }

  // A JPEG's stored size ([width, height]) and EXIF orientation, from its segments before the picture's
  // frame header; null where that header is not within `bytes`.
  function jpegHeader(bytes) {
    if (bytes[0] !== 0xff || bytes[1] !== 0xd8) return null;
    let [at, orientation] = [2, null];
    while (at + 4 <= bytes.length && bytes[at] === 0xff) {
      const marker = bytes[at + 1];
      if (marker === 0xff) {
        at++; // a fill byte
        continue;
      }
      if (SOF.has(marker)) {
        if (at + 9 > bytes.length) return null;
        return { size: frameSize(bytes, at), orientation: orientation ?? 1 };
      }
      if (marker === 0xda || marker === 0xd9) return null; // a picture without a frame header
      const end = at + 2 + ((bytes[at + 2] << 8) | bytes[at + 3]);
      if (orientation === null && end <= bytes.length) {
        orientation = segmentOrientation(bytes, marker, at, end); // the first EXIF's
      }
      at = end;
    }
    return null;
  }

  function jpegWithoutMetadata(bytes) {
    const kept = [bytes.subarray(0, 2)];
    let [size, at] = [null, 2];
    while (at + 2 <= bytes.length && bytes[at] === 0xff) {
      const marker = bytes[at + 1];
      if (marker === 0xd9) {
        kept.push(bytes.subarray(at, at + 2));
        return size && { size, parts: kept };
      }
      if (at + 4 > bytes.length) return null;
      const end = at + 2 + ((bytes[at + 2] << 8) | bytes[at + 3]);
      if (end > bytes.length) return null;
      const app = marker >= 0xe0 && marker <= 0xef;
      const orientation = segmentOrientation(bytes, marker, at, end);
      if (orientation !== null && orientation !== 1) return null; // to be turned upright: the full path
      if (SOF.has(marker)) size = frameSize(bytes, at);
      if (SOF.has(marker) && Math.max(...size) > maxSide) return null; // to be shrunk
      const keep = app ? KEPT_APPS[marker] && startsWith(bytes, at + 4, KEPT_APPS[marker]) : marker !== 0xfe;
      if (keep) kept.push(bytes.subarray(at, end));
      at = end;
      if (marker === 0xda) {
        const scanEnd = entropyEnd(bytes, at);
        if (scanEnd < 0) return null;
        kept.push(bytes.subarray(at, scanEnd));
        at = scanEnd;
      }
      while (bytes[at] === 0xff && bytes[at + 1] === 0xff) at++; // fill bytes
    }
    return null;
  }

  // A JPEG can be decoded straight to a fraction n/8 of its size, in the DCT domain (a proper filter, as
  // the server's own JPEG decoding does it): much less work than decoding 12 MP and shrinking that.
  // WebCodecs' ImageDecoder does it when asked for a smaller size (it picks n from the area asked for).
  // Used only where its frames carry the EXIF rotation (VideoFrame.rotation): createImageBitmap applies it.
  const scaledJpeg =
    typeof ImageDecoder === "function" &&
    typeof VideoFrame === "function" &&
    "rotation" in VideoFrame.prototype;

  async function decodeJpegScaled(file, [fullWidth, fullHeight], width) {
    // The largest n/8 not over `width` where it loses under a tenth of it (a 4032 px photo: 1008 px,
    // sent as it comes), else the smallest n/8 over it (shrunk the rest of the way after).
    const under = Math.floor((8 * width) / fullWidth);
    const eighths = under >= 1 && under * fullWidth >= 7.2 * width ? under : under + 1;
    const decoder = new ImageDecoder({
      data: file.stream(),
      type: "image/jpeg",
      desiredWidth: Math.ceil((fullWidth * (eighths + 0.5)) / 8), // between n/8 and (n+1)/8: gives n/8
      desiredHeight: Math.ceil((fullHeight * (eighths + 0.5)) / 8),
    });
    try {
      const { image } = await decoder.decode();
      try {
        return await createImageBitmap(image);
      } finally {
        image.close();
      }
    } finally {
      decoder.close();
    }
  }

  function canvas(width, height) {
    if (typeof OffscreenCanvas !== "undefined") return new OffscreenCanvas(width, height);
    return Object.assign(document.createElement("canvas"), { width, height });
  }

  function draw(source, width, height, { quality, background }) {
    const target = canvas(width, height);
    const context = target.getContext("2d");
    if (background) {
      context.fillStyle = background;
      context.fillRect(0, 0, width, height);
    }
    context.imageSmoothingEnabled = true;
    context.imageSmoothingQuality = quality;
    context.drawImage(source, 0, 0, width, height);
    return target;
  }

  // Halving while the photo is over twice the size (bilinear filtering at exactly half size averages
  // each 2×2 block: area averaging), then one step with the browser's high-quality resampler, onto
  // white as the server composites transparency. One big nearest-neighbour or bilinear step would
  // alias fine detail instead.
  function resample(bitmap, width, height) {
    let source = bitmap;
    let [w, h] = [bitmap.width, bitmap.height];
    while (w >= 2 * width && h >= 2 * height) {
      [w, h] = [Math.floor(w / 2), Math.floor(h / 2)];
      source = draw(source, w, h, { quality: "low" });
    }
    return draw(source, width, height, { quality: "high", background: "#fff" });
  }

  async function encode(picture) {
    const blob = picture.convertToBlob
      ? await picture.convertToBlob({ type: "image/jpeg", quality })
      : await new Promise((resolve) => picture.toBlob(resolve, "image/jpeg", quality));
    if (!blob || blob.type !== "image/jpeg") throw new Error("this browser cannot encode JPEG");
    return blob;
  }

  // The photo to send instead of `file`, or `file` itself where it should go as it is.
  async function shrink(file) {
    const type = await photoType(file);
    if (!type) return file;
    if (type === "image/jpeg" && file.size <= SMALL_JPEG_BYTES) {
      const bytes = new Uint8Array(await file.arrayBuffer());
      let stripped = null;
      try {
        stripped = jpegWithoutMetadata(bytes);
      } catch (error) {
        console.warn(`Re-encoding ${file.name}: its segments could not be read:`, error);
      }
      if (stripped) {
        return new File(stripped.parts, file.name, { type, lastModified: file.lastModified });
      }
    }
    const size = await uprightSize(file, type);
    const [fullWidth, fullHeight] = size;
    if (fullWidth * fullHeight > maxPixels) return file; // the server says why it refuses it
    const scale = Math.min(1, maxSide / Math.max(fullWidth, fullHeight));
    const width = Math.max(1, Math.round(fullWidth * scale));
    const height = Math.max(1, Math.round(fullHeight * scale));
    const bitmap =
      type === "image/jpeg" && scaledJpeg && scale <= 0.5
        ? await decodeJpegScaled(file, size, width)
        : await createImageBitmap(file, { imageOrientation: "from-image" });
    try {
      if (Math.sign(bitmap.width - bitmap.height) !== Math.sign(fullWidth - fullHeight)) {
        throw new Error("the decoded photo is not upright"); // never send a photo on its side
      }
      const [w, h] = bitmap.width < width ? [bitmap.width, bitmap.height] : [width, height]; // never enlarge
      const blob = await encode(resample(bitmap, w, h));
      return new File([blob], file.name, { type: blob.type, lastModified: file.lastModified });
    } finally {
      bitmap.close();
    }
  }

  function withinSeconds(seconds, promise) {
    const late = new Promise((_, reject) =>
      setTimeout(() => reject(new Error(`no result in ${seconds} s`)), seconds * 1000),
    );
    return Promise.race([promise, late]);
  }

  async function shrinkAll(form) {
    const shrunk = new FormData();
    for (const [name, value] of form.entries()) {
      if (!(value instanceof File)) {
        shrunk.append(name, value);
        continue;
      }
      let file = value;
      try {
        // One at a time (a 12 MP photo takes ~50 MB while decoded); a stuck decoder sends the original.
        file = await withinSeconds(30, shrink(value));
      } catch (error) {
        console.warn(`Uploading ${value.name} as it is:`, error);
      }
      shrunk.append(name, file, file.name);
    }
    return shrunk;
  }

  window.fetch = async function (input, init) {
    try {
      if (isUpload(input, init)) init = { ...init, body: await shrinkAll(init.body) };
    } catch (error) {
      console.warn("Uploading the files as they are:", error);
    }
    return sendAsIs(input, init);
  };
  window.imageClassifierUploads = { maxSide, maxPixels, quality, shrink };
}
