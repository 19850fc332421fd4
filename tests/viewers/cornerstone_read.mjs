// Reads the node's SEG and SR with dcmjs + @cornerstonejs/adapters, as OHIF does underneath, in plain
// Node. Usage: node cornerstone_read.mjs <request.json>, where the request names the files:
//   {"sources": [source image paths], "seg": path or null, "sr": path or null}
// Prints one JSON report on stdout; each part carries "error" (message + stack) instead of its result
// when the library throws, so the Python test can say what the viewer reported.
import fs from 'node:fs';
import dcmjs from 'dcmjs';
import { metaData } from '@cornerstonejs/core';
import { adaptersSEG, adaptersSR } from '@cornerstonejs/adapters';

const { DicomMessage, DicomMetaDictionary } = dcmjs.data;

function readDataset(path) {
  const bytes = fs.readFileSync(path);
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const dicom = DicomMessage.readFile(buffer);
  const dataset = DicomMetaDictionary.naturalizeDataset(dicom.dict);
  dataset._meta = DicomMetaDictionary.namifyDataset(dicom.meta);
  return { dataset, buffer };
}

const asArray = (value) => (value === undefined ? [] : Array.isArray(value) ? value : [value]);
const numbers = (value) => asArray(value).map(Number);

// One imageId per source frame, and the metadata modules cornerstone asks for, from the files' headers
// (what a DICOMweb metadata provider gives OHIF).
function sourceProvider(paths) {
  const modules = new Map();
  const imageIds = [];
  for (const [index, path] of paths.entries()) {
    const { dataset } = readDataset(path);
    const frames = Number(dataset.NumberOfFrames || 1);
    for (let frame = 1; frame <= frames; frame++) {
      const imageId = `file:${index}#frame=${frame}`;
      imageIds.push(imageId);
      const iop = numbers(dataset.ImageOrientationPatient);
      const spacing = numbers(dataset.PixelSpacing || dataset.ImagerPixelSpacing);
      modules.set(imageId, {
        instance: dataset,
        generalImageModule: { sopInstanceUID: dataset.SOPInstanceUID, instanceNumber: dataset.InstanceNumber },
        sopCommonModule: { sopInstanceUID: dataset.SOPInstanceUID, sopClassUID: dataset.SOPClassUID },
        generalSeriesModule: { seriesInstanceUID: dataset.SeriesInstanceUID, modality: dataset.Modality },
        imagePixelModule: {
          rows: dataset.Rows, columns: dataset.Columns, bitsAllocated: dataset.BitsAllocated,
          bitsStored: dataset.BitsStored, pixelRepresentation: dataset.PixelRepresentation,
          samplesPerPixel: dataset.SamplesPerPixel, photometricInterpretation: dataset.PhotometricInterpretation,
        },
        imagePlaneModule: {
          frameOfReferenceUID: dataset.FrameOfReferenceUID,
          rows: dataset.Rows, columns: dataset.Columns,
          imageOrientationPatient: iop.length ? iop : undefined,
          rowCosines: iop.length ? iop.slice(0, 3) : [1, 0, 0],
          columnCosines: iop.length ? iop.slice(3, 6) : [0, 1, 0],
          imagePositionPatient: asArray(dataset.ImagePositionPatient).length ? numbers(dataset.ImagePositionPatient) : undefined,
          pixelSpacing: spacing.length ? spacing : undefined,
          rowPixelSpacing: spacing.length ? spacing[0] : undefined,
          columnPixelSpacing: spacing.length ? spacing[1] : undefined,
          sliceThickness: dataset.SliceThickness === undefined ? undefined : Number(dataset.SliceThickness),
        },
        frameNumber: frame,
      });
    }
  }
  const provider = {
    get(type, imageId) {
      return modules.get(imageId)?.[type];
    },
    add(imageId, type, value) {
      if (!modules.has(imageId)) modules.set(imageId, {});
      modules.get(imageId)[type] = value;
    },
  };
  metaData.addProvider((type, imageId) => provider.get(type, imageId), 10000);
  return { provider, imageIds };
}

const describeError = (e) => ({ message: String(e?.message ?? e), stack: String(e?.stack ?? '') });

async function readSeg(path, provider, imageIds) {
  const { buffer } = readDataset(path);
  const result = await adaptersSEG.Cornerstone3D.Segmentation.createFromDICOMSegBuffer(imageIds, buffer, {
    metadataProvider: provider,
  });
  const sopOf = (imageId) => provider.get('generalImageModule', imageId).sopInstanceUID;
  const segments = {};
  for (const [number, meta] of Object.entries(result.segMetadata.data)) {
    if (!meta) continue;
    const lab = meta.RecommendedDisplayCIELabValue;
    segments[number] = {
      label: meta.SegmentLabel,
      type: asArray(meta.SegmentedPropertyTypeCodeSequence)[0]?.CodeMeaning ?? null,
      cielab: lab === undefined ? null : numbers(lab),
      rgb: lab === undefined ? null : dcmjs.data.Colors.dicomlab2RGB(numbers(lab)).map((c) => Math.round(c * 255)),
      voxels: 0,
      sources: [],
    };
  }
  // Count each segment's voxels per source image from the labelmaps cornerstone built.
  result.labelMapImages.flat().forEach((image, index) => {
    const pixels = image.getPixelData ? image.getPixelData() : image.voxelManager?.getScalarData?.();
    if (!pixels) return;
    const imageId = image.referencedImageId ?? imageIds[index % imageIds.length];
    for (const value of pixels) {
      if (value && segments[value]) segments[value].voxels += 1;
    }
    for (const number of new Set(pixels)) {
      if (number && segments[number]) segments[number].sources.push(sopOf(imageId));
    }
  });
  const framesOnImages = {};
  result.segmentsOnFrame.forEach((numbersOnFrame, index) => {
    if (numbersOnFrame?.length) framesOnImages[sopOf(imageIds[index])] = numbersOnFrame;
  });
  return { segments, segmentsOnImage: framesOnImages, overlapping: Boolean(result.overlappingSegments) };
}

function readSr(path, provider, imageIds) {
  const { dataset } = readDataset(path);
  const map = {};
  for (const imageId of imageIds) {
    map[`${provider.get('sopCommonModule', imageId).sopInstanceUID}:${provider.get('frameNumber', imageId)}`] = imageId;
  }
  const sopOf = (imageId) => (imageId ? provider.get('sopCommonModule', imageId).sopInstanceUID : null);
  const warnings = [];
  const warn = console.warn;
  console.warn = (...args) => warnings.push(args.map((a) => (a instanceof Error ? a.message : typeof a === 'string' ? a : '')).join(' '));
  const log = console.log;
  console.log = () => {};
  let state;
  try {
    state = adaptersSR.Cornerstone3D.MeasurementReport.generateToolState(dataset, map, provider);
  } finally {
    console.warn = warn;
    console.log = log;
  }
  const measurements = [];
  for (const [toolType, items] of Object.entries(state)) {
    for (const item of items) {
      const stats = Object.values(item.annotation?.data?.cachedStats ?? {})[0] ?? {};
      measurements.push({
        toolType,
        label: item.annotation?.data?.label ?? item.description ?? null,
        finding: item.finding?.CodeMeaning ?? null,
        trackingUid: item.TrackingUniqueIdentifier ?? null,
        referencedSop: sopOf(item.annotation?.metadata?.referencedImageId),
        frameOfReference: item.annotation?.metadata?.FrameOfReferenceUID ?? null,
        stats: Object.fromEntries(Object.entries(stats).filter(([, v]) => typeof v === 'number' || typeof v === 'string')),
      });
    }
  }
  return { measurements, warnings };
}

const request = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const { provider, imageIds } = sourceProvider(request.sources);
const report = {};
if (request.seg) {
  try {
    report.seg = await readSeg(request.seg, provider, imageIds);
  } catch (e) {
    report.seg = { error: describeError(e) };
  }
}
if (request.sr) {
  try {
    report.sr = readSr(request.sr, provider, imageIds);
  } catch (e) {
    report.sr = { error: describeError(e) };
  }
}
process.stdout.write(JSON.stringify(report) + '\n');
process.exit(0);
