#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Remove the Windows service "warren" that install.ps1 registered.

.DESCRIPTION
    Stops the service (a graceful stop: no new connections, open ones get the grace period),
    deletes it, removes its firewall rules and C:\Program Files\warren. The config, the log and
    the drain state in C:\ProgramData\warren stay unless -Purge is given.

.PARAMETER Purge
    Also delete C:\ProgramData\warren (config, log, drain state).
#>
param(
    [switch] $Purge
)

$ErrorActionPreference = 'Stop'
$ServiceName = 'warren'
$InstallDir = Join-Path $env:ProgramFiles 'warren'
$DataDir = Join-Path $env:ProgramData 'warren'

$Service = Get-Service -Name $ServiceName -ErrorAction SilentlyContinue
if ($Service) {
    if ($Service.Status -ne 'Stopped') {
        # Waits while warren reports "stop pending" (the grace period, 30 s by default).
        Stop-Service -Name $ServiceName
    }
    & sc.exe delete $ServiceName | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "sc.exe delete failed ($LASTEXITCODE)" }
} else {
    Write-Host "no service '$ServiceName' registered"
}

Get-NetFirewallRule | Where-Object { $_.Name -like 'warren-tcp-*' } | Remove-NetFirewallRule
if (Test-Path $InstallDir) { Remove-Item -Recurse -Force $InstallDir }
if ($Purge) {
    if (Test-Path $DataDir) { Remove-Item -Recurse -Force $DataDir }
    Write-Host "removed the service, its firewall rules, $InstallDir and $DataDir"
} else {
    Write-Host "removed the service, its firewall rules and $InstallDir; kept $DataDir (config, log, state; -Purge deletes it)"
}
