// Reads the node's SEG and SR with dcmjs + @cornerstonejs/adapters, as OHIF does underneath, in plain
// Node. Usage: node cornerstone_read.mjs <request.json>, where the request names the files of each result:
//   {"results": {name: {"sources": [source image paths], "seg": path or null, "sr": path or null}}}
// Prints one JSON report on stdout, {name: {"seg": ..., "sr": ...}}; each part carries "error"
// (message + stack) instead of its result when the library throws, so the Python test can say what
// the viewer reported.
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
// (what a DICOMweb metadata provider gives OHIF). An image without a plane (a CR or DX) gets the plane
// cornerstone's own provider assumes for it (@cornerstonejs/metadata getImagePlaneCalibrated): position
// (0, 0, 0), orientation 1\0\0\0\1\0.
// A frame's plane: the top-level attributes of a single-frame image, the functional groups of a
// multi-frame one (per-frame first, then shared), as OHIF's metadata provider combines them.
function framePlane(dataset, frame) {
  const perFrame = asArray(dataset.PerFrameFunctionalGroupsSequence)[frame - 1] ?? {};
  const shared = asArray(dataset.SharedFunctionalGroupsSequence)[0] ?? {};
  const fromGroups = (sequence, keyword) =>
    asArray(perFrame[sequence])[0]?.[keyword] ?? asArray(shared[sequence])[0]?.[keyword];
  const thickness = fromGroups('PixelMeasuresSequence', 'SliceThickness') ?? dataset.SliceThickness;
  return {
    orientation: numbers(fromGroups('PlaneOrientationSequence', 'ImageOrientationPatient') ?? dataset.ImageOrientationPatient),
    position: numbers(fromGroups('PlanePositionSequence', 'ImagePositionPatient') ?? dataset.ImagePositionPatient),
    spacing: numbers(fromGroups('PixelMeasuresSequence', 'PixelSpacing') ?? dataset.PixelSpacing ?? dataset.ImagerPixelSpacing),
    thickness: thickness === undefined ? undefined : Number(thickness),
  };
}

const modules = new Map();
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

function sourceImageIds(name, paths) {
  const imageIds = [];
  for (const [index, path] of paths.entries()) {
    const { dataset } = readDataset(path);
    const frames = Number(dataset.NumberOfFrames || 1);
    for (let frame = 1; frame <= frames; frame++) {
      const imageId = `file:${name}/${index}#frame=${frame}`;
      imageIds.push(imageId);
      const plane = framePlane(dataset, frame);
      const iop = plane.orientation.length ? plane.orientation : [1, 0, 0, 0, 1, 0];
      const ipp = plane.position.length ? plane.position : [0, 0, 0];
      const spacing = plane.spacing;
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
          imageOrientationPatient: iop,
          rowCosines: iop.slice(0, 3),
          columnCosines: iop.slice(3, 6),
          imagePositionPatient: ipp,
          pixelSpacing: spacing.length ? spacing : undefined,
          rowPixelSpacing: spacing.length ? spacing[0] : undefined,
          columnPixelSpacing: spacing.length ? spacing[1] : undefined,
          sliceThickness: plane.thickness,
        },
        frameNumber: frame,
      });
    }
  }
  return imageIds;
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
  // generateToolState warns once per group it cannot turn into a tool, with the group: keep its
  // Tracking Unique Identifier so that the test can tell which group it was.
  const warnings = [];
  const warn = console.warn;
  const uidOf = (group) => asArray(group?.ContentSequence).find((item) => item?.ValueType === 'UIDREF')?.UID ?? null;
  console.warn = (...args) => warnings.push({
    trackingUid: uidOf(args.find((a) => a && typeof a === 'object' && !(a instanceof Error))),
    message: args.map((a) => (a instanceof Error ? a.message : typeof a === 'string' ? a : '')).join(' ').trim(),
  });
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
const report = {};
for (const [name, files] of Object.entries(request.results)) {
  const imageIds = sourceImageIds(name, files.sources);
  report[name] = {};
  if (files.seg) {
    try {
      report[name].seg = await readSeg(files.seg, provider, imageIds);
    } catch (e) {
      report[name].seg = { error: describeError(e) };
    }
  }
  if (files.sr) {
    try {
      report[name].sr = readSr(files.sr, provider, imageIds);
    } catch (e) {
      report[name].sr = { error: describeError(e) };
    }
  }
}
process.stdout.write(JSON.stringify(report) + '\n');
process.exit(0);
