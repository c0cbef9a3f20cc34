-- Orthanc auto-routing rule for dicom-synth-node (deploy/README.md explains each condition).
--
-- When a series becomes stable (StableAge seconds after its last instance), send it to the node if
-- it is thick-slice chest CT acquired by a scanner, and never if it is the node's own output coming
-- back. The node also refuses its own output by itself (reason own_output); this rule keeps the
-- traffic from happening at all.

local NODE_MODALITY = 'SYNTHNODE'          -- the key of the node in "DicomModalities"
local NODE_AET = 'SYNTHNODE'               -- the node's AE title (node.ae_title)
local OUR_MANUFACTURER = 'dicom-synth-node'  -- ContributingEquipmentSequence Manufacturer of our output
local CT_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.2'
local MIN_THICKNESS_MM = 4.0               -- thinner series need no synthesis
local MAX_THICKNESS_MM = 6.0               -- the model is trained for 5 mm
local CHEST = { 'CHEST', 'THORAX', 'LUNG', 'CHEST_ABDOMEN', 'CHESTABDOMEN', 'THORAX_ABDOMEN' }
local MIN_INSTANCES = 2
-- With routing rules in the node ([[rules]], deploy/README.md "Routing rules in the node"), set this to
-- true: Orthanc then sends every CT series that is not the node's own output, and the node's rules
-- (try them with `dicom-node route`) decide the rest. A series no rule takes is kept there as no_rule,
-- listed and counted, instead of being filtered here where only Orthanc's log says why.
local NODE_DECIDES = false

local function has_word(text, words)
  local upper = string.upper(text or '')
  for _, word in ipairs(words) do
    if string.find(upper, word, 1, true) then return true end
  end
  return false
end

local function own_output(tags, remote_aet)
  if remote_aet == NODE_AET then return true end
  local image_type = string.upper(tags['ImageType'] or '')
  if string.find(image_type, 'DERIVED', 1, true) or string.find(image_type, 'SECONDARY', 1, true) then
    return true
  end
  for _, item in ipairs(tags['ContributingEquipmentSequence'] or {}) do
    if item['Manufacturer'] == OUR_MANUFACTURER then return true end
  end
  return string.find(tags['DerivationDescription'] or '', OUR_MANUFACTURER, 1, true) ~= nil
end

-- Returns nil when the series should go to the node, else why not (printed to Orthanc's log).
function SynthNodeRouteDecision(series_tags, instance_tags, instance_count, remote_aet)
  if series_tags['Modality'] ~= 'CT' then return 'not CT' end
  if instance_tags['SOPClassUID'] ~= CT_IMAGE_STORAGE then return 'not CT Image Storage' end
  if own_output(instance_tags, remote_aet) then return 'derived (our own output or another MPR)' end
  if NODE_DECIDES then return nil end         -- the node's [[rules]] take it from here
  local thickness = tonumber(instance_tags['SliceThickness'] or '')
  if thickness == nil or thickness < MIN_THICKNESS_MM or thickness > MAX_THICKNESS_MM then
    return 'slice thickness ' .. tostring(instance_tags['SliceThickness']) .. ' mm is out of range'
  end
  if not (has_word(series_tags['BodyPartExamined'], CHEST)
          or has_word(series_tags['SeriesDescription'], { 'CHEST', 'THORAX', 'LUNG' })) then
    return 'not chest (BodyPartExamined ' .. tostring(series_tags['BodyPartExamined']) .. ')'
  end
  if instance_count < MIN_INSTANCES then return 'fewer than ' .. MIN_INSTANCES .. ' instances' end
  return nil
end

function OnStableSeries(seriesId, tags, metadata)
  local series = ParseJson(RestApiGet('/series/' .. seriesId))
  local instances = series['Instances'] or {}
  if #instances == 0 then return end
  local first = instances[1]
  local instance_tags = ParseJson(RestApiGet('/instances/' .. first .. '/simplified-tags'))
  local ok, remote_aet = pcall(RestApiGet, '/instances/' .. first .. '/metadata/RemoteAET')
  if not ok then remote_aet = '' end           -- uploaded over REST: no calling AE
  local why_not = SynthNodeRouteDecision(tags, instance_tags, #instances, remote_aet)
  if why_not ~= nil then
    print('synth-node route: series ' .. seriesId .. ' not sent: ' .. why_not)
    return
  end
  local job = RestApiPost('/modalities/' .. NODE_MODALITY .. '/store',
    DumpJson({ Resources = { seriesId }, Synchronous = false }, true))
  print('synth-node route: series ' .. seriesId .. ' sent to ' .. NODE_MODALITY .. ': ' .. job)
end
