-- Argo CD health check for datasetprep.io/DatasetPrep and datasetprep.io/DatasetBlend (Lua 5.1: Argo CD
-- runs gopher-lua). One script for both kinds, which report kstatus conditions alike; installed as
-- resource.customizations.health.datasetprep.io_DatasetPrep and ..._DatasetBlend (argocd-cm-patch.yaml).
--
--   Progressing  no status yet, or status.observedGeneration behind metadata.generation
--                (the operator has not looked at the latest spec), or Reconciling=True,
--                or phase Pending/Running (DatasetPrep; a DatasetBlend has no phase)
--   Degraded     Stalled=True (message: the Stalled condition's message) or phase Failed
--   Healthy      Ready=True and status.observedGeneration == metadata.generation
--   Progressing  anything else (e.g. Ready=False with no verdict yet)
--
-- Stale results are never reported: a Degraded or Healthy verdict about an older
-- generation is Progressing until the operator catches up.
local hs = {}

local function condition(status, ctype)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function first(...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if v ~= nil and v ~= "" then
      return v
    end
  end
  return nil
end

local status = obj.status
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end

if status == nil or next(status) == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the datasetprep operator to pick up the resource"
  return hs
end

local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  if observed ~= nil then
    hs.message = hs.message .. " (last observed: " .. tostring(observed) .. ")"
  end
  return hs
end

local ready = condition(status, "Ready")
local reconciling = condition(status, "Reconciling")
local stalled = condition(status, "Stalled")

if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = first(stalled.message, stalled.reason, status.message, "Stalled")
  return hs
end

if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = first(status.message, "Failed")
  return hs
end

if is_true(reconciling) or status.phase == "Pending" or status.phase == "Running" then
  hs.status = "Progressing"
  local progress = nil
  if status.progress ~= nil then
    progress = status.progress.summary
  end
  local msg = first(reconciling ~= nil and is_true(reconciling) and reconciling.message or nil,
                    status.message, status.phase, "Reconciling")
  if progress ~= nil and progress ~= "" then
    msg = msg .. " (" .. progress .. ")"
  end
  hs.message = msg
  return hs
end

if is_true(ready) and (generation == nil or observed == generation) then
  hs.status = "Healthy"
  hs.message = first(ready.message, status.message, "Ready")
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = first(ready.message, ready.reason, status.message, "Not ready yet")
else
  hs.message = first(status.message, "Waiting for the Ready condition")
end
return hs
