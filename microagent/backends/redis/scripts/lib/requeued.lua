-- The retry-store member of a dead letter put back as attempt 1: ``{id}1|0|{sender}\n{data}``, the
-- sender read from the dead letter's JSON line (none when that line is unreadable).
local function requeued(entry, id)
  local cut = string.find(entry, '\n', 1, true)
  if not cut then return id .. '1|0|\n' .. entry end
  local sender = ''
  local ok, meta = pcall(cjson.decode, string.sub(entry, 1, cut - 1))
  if ok and type(meta) == 'table' and type(meta.sender) == 'string' then
    sender = string.gsub(meta.sender, '\n', '')
  end
  return id .. '1|0|' .. sender .. '\n' .. string.sub(entry, cut + 1)
end
